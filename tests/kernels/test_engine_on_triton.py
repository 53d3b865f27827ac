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
