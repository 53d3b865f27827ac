"""On a CUDA machine (skipped elsewhere): deterministic inference in bfloat16, where the fast paths
round differently per batch shape. A request's tokens and logprobs have the same bits alone and in
a batch of eight, with CUDA graphs and without, its prompt chunked or whole, its prompt's prefix
read from the cache or computed, and a conversation's second turn likewise."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]

NEW = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module", params=[384, 389], ids=["vocab384", "odd_vocab"])
def setup(tiny_model_dir, request):
    # wide enough that cuBLAS picks other kernels for 1, 8 and 300 rows; an odd vocabulary puts logit
    # rows at other alignments, where torch's log_softmax may sum in another order
    path = tiny_model_dir("llama", hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=4,
                          intermediate_size=2816, max_position_embeddings=2048, vocab_size=request.param)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 300, (n,), generator=gen).tolist() for n in (5, 40, 130, 300, 17, 64, 250, 90)]
    return path, prompts


def _outputs(path, prompts, **options):
    from tests.integration.engine_helpers import checked_engine

    params = dict(sampling_params=NEW, return_logprob=True)
    pick = lambda out: (out["output_ids"], out["meta_info"]["output_token_logprobs"])  # noqa: E731
    with checked_engine(model_path=path, dtype="bfloat16", device="cuda", attention_backend="triton",
                        deterministic_inference=True, cuda_graph_max_bs=8, **options) as engine:
        batched = [pick(o) for o in engine.generate(input_ids=prompts, **params)]
        engine.flush_cache()
        alone = [pick(engine.generate(input_ids=p, **params)) for p in prompts]
        # prompts 3 and 6 are in the cache now: two prompts that start with them, and a second turn
        shared = [pick(o) for o in engine.generate(input_ids=[prompts[3] + prompts[0], prompts[6][:200] + prompts[1]],
                                                   **params)]
        second_turn = pick(engine.generate(input_ids=prompts[2] + alone[2][0] + prompts[0], **params))
    for ids, logprobs in batched + alone + shared + [second_turn]:  # a failed step would leave empty lists
        assert len(ids) == len(logprobs) == NEW["max_new_tokens"]
    return batched, alone, shared, second_turn


def test_bfloat16_alone_batched_chunked_and_cached_give_the_same_bits(setup):
    path, prompts = setup
    reference = _outputs(path, prompts)
    batched, alone = reference[:2]
    assert batched == alone
    assert _outputs(path, prompts, disable_cuda_graph=True) == reference
    assert _outputs(path, prompts, disable_radix_cache=True) == reference
    assert _outputs(path, prompts, chunked_prefill_size=48) == reference
