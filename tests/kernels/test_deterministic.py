"""Deterministic inference (EngineConfig.deterministic_inference), on our Triton kernels interpreted on
the CPU: the batch-invariant product gives a row the same bits whatever rows share its launch, and
the engine gives a request the same tokens and logprobs, bit for bit, alone or batched, chunked or
not, with its prefix cached or recomputed. (The interpreter computes tl.dot in bfloat16 wrongly, so
these run in float32; tests/gpu/test_deterministic_on_gpu.py runs bfloat16 on a GPU.)"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton is imported anywhere in this process

import pytest
import torch

pytest.importorskip("triton")

from tests.integration.engine_helpers import checked_engine, hf_greedy  # noqa: E402

PROMPTS = ["Hello", "The cat sees the dog and the bird.", "Q: What is paris? A:", "one two three four five six",
           # long enough that the default engine would split its decode attention (more than 64 tokens)
           " ".join(["the quick brown fox jumps over the lazy dog"] * 12)]
GREEDY = {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}


def test_a_row_has_the_same_bits_in_any_launch():
    from runtime.model.invariant_matmul import invariant_matmul

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 72, generator=gen)  # K not a multiple of the tile: a masked last chunk
    x = torch.randn(130, 72, generator=gen)
    full = invariant_matmul(x, weight, num_sms=4)
    torch.testing.assert_close(full, x @ weight.T, rtol=1e-5, atol=1e-5)
    for rows in (1, 3, 64, 65):
        assert torch.equal(invariant_matmul(x[:rows].clone(), weight, num_sms=4), full[:rows]), rows
    order = torch.randperm(130, generator=gen)
    assert torch.equal(invariant_matmul(x[order].clone(), weight, num_sms=4), full[order])
    assert invariant_matmul(x[:0], weight, num_sms=4).shape == (0, 40)


def test_the_launch_shape_follows_the_weight_and_the_card_only():
    from runtime.model.invariant_matmul import invariant_config

    assert invariant_config(28672, 4096, 132).block_n == 128  # 224 column tiles
    assert invariant_config(6144, 4096, 132).block_n == 32  # 96 tiles of 64 would leave SMs idle at one row
    assert invariant_config(4096, 4096, 64).block_n == 64
    # the deepest K tile that fits the card: a long K in 32-wide tiles takes 256, others 128 ...
    hopper = 227 * 1024
    assert (invariant_config(4096, 14336, 132, shared_memory=hopper).block_k,
            invariant_config(4096, 14336, 132, shared_memory=hopper).num_stages) == (256, 3)
    assert (invariant_config(28672, 4096, 132, shared_memory=hopper).block_k,
            invariant_config(28672, 4096, 132, shared_memory=hopper).num_stages) == (128, 4)
    # ... and a card with less shared memory gets a shallower one that fits, never a failed launch
    for shared_memory in (100 * 1024, 64 * 1024, 48 * 1024):
        for n, k in ((28672, 4096), (4096, 14336), (6144, 4096)):
            c = invariant_config(n, k, 132, shared_memory=shared_memory)
            assert c.num_stages * (c.block_m + c.block_n) * c.block_k * 2 <= shared_memory, (shared_memory, n, k, c)
    assert invariant_config(4096, 14336, 132, torch.float32).block_k == 64  # float32: as before


def test_bad_operands_get_a_clear_error():
    from runtime.model.invariant_matmul import invariant_matmul

    with pytest.raises(ValueError, match="weight \\[N, K\\]"):
        invariant_matmul(torch.ones(2, 3), torch.ones(4, 5))
    with pytest.raises(ValueError, match="one dtype"):
        invariant_matmul(torch.ones(2, 3), torch.ones(4, 3, dtype=torch.float64))


def _run(path, ids, **options):
    """Each prompt's output ids and output logprobs, batched, then alone."""
    params = dict(sampling_params=GREEDY, return_logprob=True)
    with checked_engine(model_path=path, dtype="float32", attention_backend="triton", deterministic_inference=True,
                        **options) as engine:
        batched = engine.generate(input_ids=ids, **params)
        engine.flush_cache()
        alone = [engine.generate(input_ids=one, **params) for one in ids]
        # the conversation goes on: prompt + answer, its prefix (answer included) from the cache
        follow = engine.generate(input_ids=ids[1] + alone[1]["output_ids"] + ids[2], **params)
    pick = lambda out: (out["output_ids"], out["meta_info"]["output_token_logprobs"])  # noqa: E731
    for out in batched + alone + [follow]:  # every step ran: a failed one would leave equal, empty lists
        assert len(out["output_ids"]) == len(out["meta_info"]["output_token_logprobs"]) == GREEDY["max_new_tokens"]
    return [pick(o) for o in batched], [pick(o) for o in alone], pick(follow)


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    from transformers import AutoTokenizer

    path = tiny_model_dir("llama")
    ids = [AutoTokenizer.from_pretrained(path).encode(p) for p in PROMPTS]
    assert len(ids[-1]) > 64
    return path, ids


def test_alone_batched_chunked_and_cached_give_the_same_bits(setup):
    path, ids = setup
    batched, alone, follow = _run(path, ids)
    assert batched == alone  # tokens and logprobs, exactly
    # and right: equal among themselves would also hold for kernels equally wrong
    assert [tokens for tokens, _ in batched] == hf_greedy(path, ids, GREEDY["max_new_tokens"])
    chunked = _run(path, ids, chunked_prefill_size=3)
    uncached = _run(path, ids, disable_radix_cache=True)
    assert chunked == uncached == (batched, alone, follow)


def test_only_prefill_kv_stays_in_the_cache(setup):
    """Decode attention and prefill attention round differently on a GPU, so a later prompt reusing
    decoded KV would get other bits than the same prompt computed afresh: only the prompt's KV stays."""
    path, ids = setup
    for deterministic in (True, False):
        with checked_engine(model_path=path, dtype="float32", attention_backend="triton",
                            deterministic_inference=deterministic) as engine:
            engine.generate(input_ids=ids[1], sampling_params=GREEDY)
            decoded = GREEDY["max_new_tokens"] - 1  # the last token's KV is never computed
            assert engine.scheduler.cache.total_size == len(ids[1]) + (0 if deterministic else decoded)


def test_it_refuses_what_it_cannot_keep(tiny_model_dir):
    from runtime import Engine

    path = tiny_model_dir("llama")
    with pytest.raises(ValueError, match="attention_backend='triton'"):
        Engine(model_path=path, dtype="float32", attention_backend="torch_native", deterministic_inference=True)
    with pytest.raises(ValueError, match="unquantized"):
        Engine(model_path=path, dtype="bfloat16", attention_backend="triton", deterministic_inference=True,
               quantization="fp8")


def test_decode_attention_splits_by_length_whatever_the_batch():
    """The default engine's split count follows the batch size, so a request's keys are summed in
    other orders in other batches; deterministic inference's follows the longest request only, and
    the kernel cuts each request by its own length (test_triton_attention checks the bits). The
    engine test's tiny model can hide one ulp of attention in its residual stream, so this asks the
    backend directly."""
    from runtime.attention.triton.backend import DETERMINISTIC_SPLITS, TritonAttention

    device = torch.device("cpu")
    for deterministic, expected in ((True, [16, 1, 16]), (False, [4, 2, 1])):
        backend = TritonAttention(deterministic=deterministic)
        seen = []
        for batch_size, longest in ((1, 4096), (1, 100), (64, 4096)):
            backend.metadata = type("Meta", (), {"max_seq_len": longest})()
            seen.append(backend._decode_splits(batch_size, 2, device))
        assert seen == expected, (deterministic, seen)
    assert DETERMINISTIC_SPLITS.launch_splits(4096) == 16 and DETERMINISTIC_SPLITS.launch_splits(100) == 1


def test_a_row_normaliser_is_log_softmax_and_independent_of_the_rows_around_it():
    from runtime.log_normaliser import log_normalisers
    from runtime.sampler import token_logprob_tensors

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4101, generator=gen) * 4  # an odd vocabulary, past two chunks
    row_max, log_sum = log_normalisers(logits)
    torch.testing.assert_close(row_max + log_sum, torch.logsumexp(logits, -1), rtol=1e-6, atol=1e-5)
    for row in range(5):
        alone = log_normalisers(logits[row : row + 1].clone())
        assert torch.equal(alone[0], row_max[row : row + 1]) and torch.equal(alone[1], log_sum[row : row + 1])
    tokens = torch.tensor([0, 7, 4100, 3, 9])
    want = token_logprob_tensors(logits, tokens, 3)
    got = token_logprob_tensors(logits, tokens, 3, row_invariant=True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert torch.equal(got[2], want[2])


@pytest.mark.parametrize("tied", [False, True])
def test_every_product_takes_the_invariant_kernel(tiny_model_dir, monkeypatch, tied):
    import runtime.model.invariant_matmul as invariant

    path = tiny_model_dir("llama", tie_word_embeddings=tied)  # tied: the LM head is the embedding
    ids = [[5, 9, 30, 31]]
    calls = []
    original = invariant.invariant_matmul
    monkeypatch.setattr(invariant, "invariant_matmul", lambda x, w, *a, **k: calls.append(tuple(w.shape)) or original(x, w, *a, **k))
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: pytest.fail("a product took F.linear"))
    with checked_engine(model_path=path, dtype="float32", attention_backend="triton", deterministic_inference=True) as engine:
        engine.generate(input_ids=ids[0], sampling_params={**GREEDY, "max_new_tokens": 2})
        vocab = engine.runner.vocab_size
    assert any(rows == vocab for rows, _ in calls), "the LM head did not take the invariant kernel"
