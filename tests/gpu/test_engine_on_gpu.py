"""On a CUDA machine (skipped elsewhere): the engine's GPU paths give HF's greedy tokens exactly on
a small float32 model — Triton kernels with and without CUDA graphs, chunked prefill, fused
elementwise kernels — and leave the KV pool whole. benchmarks/bench_gpu.py runs the same check
first on the benchmark machine."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

VARIANTS = {
    "triton+graphs": {},
    "triton eager": {"disable_cuda_graph": True},
    "chunked prefill 5": {"chunked_prefill_size": 5},
    "torch_native": {"attention_backend": "torch_native"},
}


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    from transformers import AutoTokenizer

    from tests.integration.engine_helpers import hf_greedy

    path = tiny_model_dir("llama", hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=512)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok.encode(p) for p in ["Hello", "The cat sees the dog.", "Q: What is paris? A:", "1. a, b, c"]]
    return path, prompts, hf_greedy(path, prompts, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gpu_greedy_equals_hf(setup, variant):
    from tests.integration.engine_helpers import checked_engine

    path, prompts, expected = setup
    options = {"attention_backend": "triton", **VARIANTS[variant]}
    with checked_engine(model_path=path, dtype="float32", device="cuda", **options) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True})
        assert [o["output_ids"] for o in outs] == expected
