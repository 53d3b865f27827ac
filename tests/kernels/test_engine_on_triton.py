"""The whole engine on our Triton kernels (interpreted on the CPU): greedy output equals HF (with RoPE
applied as the backend writes the KV, for Llama's side-by-side q/k heads and Qwen3's normed ones),
and the static-buffer decode path that CUDA graphs replay gives the same tokens as the per-step one."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton is imported anywhere in this process

import pytest

pytest.importorskip("triton")

from tests.integration.engine_helpers import checked_engine, hf_greedy  # noqa: E402

PROMPTS = ["Hello", "The cat sees the dog and the bird.", "Q: What is paris? A:"]
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def setup(tiny_model_dir, request):
    from transformers import AutoTokenizer

    path = tiny_model_dir(request.param)
    ids = [AutoTokenizer.from_pretrained(path).encode(p) for p in PROMPTS]
    return path, ids, hf_greedy(path, ids, GREEDY["max_new_tokens"])


@pytest.mark.parametrize("chunk", [4, 8192])
def test_engine_on_triton_kernels_matches_hf(setup, chunk, monkeypatch):
    import runtime.model.llama as llama

    monkeypatch.setattr(llama, "apply_rotary", lambda *a: pytest.fail("the model rotated q/k itself"))
    path, ids, expected = setup
    with checked_engine(model_path=path, dtype="float32", attention_backend="triton", chunked_prefill_size=chunk) as engine:
        outs = engine.generate(input_ids=ids, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == expected


def test_graph_decode_metadata_path_matches(setup):
    """Route every decode step through prepare_cuda_graph_decode (static buffers, fixed split count),
    as CUDA-graph replay does, without a GPU: the tokens must not change."""
    path, ids, expected = setup
    with checked_engine(model_path=path, dtype="float32", attention_backend="triton") as engine:
        runner = engine.runner
        runner.attn_backend.init_cuda_graph_state(8, runner.context_len + 1, runner.device, runner.model.attention_layer, runner.dtype)
        original = runner.forward

        def forward(batch):
            if batch.is_decode:
                runner.attn_backend.prepare_cuda_graph_decode(batch)
                return runner.model(batch.input_ids, batch.positions, batch)
            return original(batch)

        runner.forward = forward
        outs = engine.generate(input_ids=ids, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == expected


def test_prefill_runs_its_last_layer_for_the_rows_it_samples_or_scores(setup, monkeypatch):
    """A prompt step runs its last layer's attention output, MLP and final norm only for the rows the
    sampler reads: none mid-prompt, the last token where a prompt ends, every token of a request that
    asks for prompt logprobs. Tokens and logprobs equal the full pass's (the option that turns it off)."""
    from runtime.attention.triton import backend as triton_backend

    path, ids, expected = setup
    rows_seen = []
    original = triton_backend.TritonAttention.forward_output_rows

    def spy(self, q, k, v, layer, batch, rotary=None):
        out = original(self, q, k, v, layer, batch, rotary)
        rows_seen.append((q.shape[0], out.shape[0], list(zip(batch.output_lens_cpu.tolist(),
                                                             batch.extend_seq_lens_cpu.tolist()))))
        return out

    monkeypatch.setattr(triton_backend.TritonAttention, "forward_output_rows", spy)
    scored = [False, True, False]  # one request of the batch scores its prompt
    results = {}
    for full_pass in (True, False):
        options = dict(model_path=path, dtype="float32", attention_backend="triton", disable_output_rows_only=full_pass)
        with checked_engine(chunked_prefill_size=6, **options) as engine:
            results[full_pass] = engine.generate(input_ids=ids, sampling_params=GREEDY, return_logprob=scored,
                                                 logprob_start_len=0, top_logprobs_num=2)
        with checked_engine(**options) as engine:
            # unchunked and unscored: the three prompts end in one step, their rows packed at 0, 1, 2
            results[full_pass, "one step"] = engine.generate(input_ids=ids, sampling_params=GREEDY,
                                                             return_logprob=True, top_logprobs_num=2)
        assert bool(rows_seen) != full_pass  # the full pass never asks for some rows
    full, pruned = results[True], results[False]
    assert [o["output_ids"] for o in pruned] == [o["output_ids"] for o in full] == expected
    for key in ("input_token_logprobs", "input_top_logprobs"):
        a, b = full[1]["meta_info"][key], pruned[1]["meta_info"][key]
        assert len(a) == len(b) == len(ids[1])
        assert _logprob_entries(a) == pytest.approx(_logprob_entries(b), abs=1e-4, nan_ok=True)
    for a, b in zip(results[True, "one step"], results[False, "one step"]):
        assert a["output_ids"] == b["output_ids"]
        entries = [_logprob_entries(o["meta_info"]["output_top_logprobs"]) for o in (a, b)]
        assert entries[0] == pytest.approx(entries[1], abs=1e-4, nan_ok=True)  # the first token's from the kept rows
    assert any(kept == [1, 1, 1] for _, _, lens in rows_seen for kept in [[k for k, _ in lens]])
    # the steps: a mid-prompt chunk keeps no row, an ending prompt its last, the scored prompt all
    assert any(kept == 0 for _, _, lens in rows_seen for kept, _ in lens)
    assert any(total > kept_rows > 0 for total, kept_rows, _ in rows_seen)
    assert any(kept == n > 1 for _, _, lens in rows_seen for kept, n in lens)


def _logprob_entries(entries) -> list:
    """(logprob, token) entries, or lists of them (top logprobs), flattened to numbers (None as nan)."""
    flat = []
    for entry in entries:
        for lp, token, _ in ([entry] if entry and not isinstance(entry, list) else entry or []):
            flat += [float("nan") if lp is None else lp, token]
    return flat
