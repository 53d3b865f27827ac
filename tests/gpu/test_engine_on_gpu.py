"""On a CUDA machine (skipped elsewhere): the engine's GPU paths give HF's greedy tokens exactly on
a small float32 model — Triton kernels with and without CUDA graphs, chunked prefill, fused
elementwise kernels — and leave the KV pool whole. benchmarks/bench_gpu.py runs the same check
first on the benchmark machine."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Graphs up to batch 8 cover these 4-prompt batches; capturing the default ~40 sizes took ~1 min an engine.
SMALL_GRAPHS = {"cuda_graph_max_bs": 8}
VARIANTS = {
    "triton+graphs": SMALL_GRAPHS,
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


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_steady_decode_never_waits_for_the_gpu(setup, tiny_model_dir, backend):
    """Overlap scheduling only overlaps if the host never blocks on the device between steps: torch's
    sync debug mode raises on any synchronising call made while decode batches run (CUDA graphs,
    greedy and sampled rows, logprobs). Prefill steps may sync (prompt logprobs), so the check
    starts once every request decodes."""
    import threading

    from tests.integration.engine_helpers import checked_engine

    path, prompts, _ = setup
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
        # head_dim 128, a size FlashInfer's kernels are built for
        path = tiny_model_dir("llama", hidden_size=512, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=1024)
    with checked_engine(model_path=path, dtype="bfloat16", device="cuda", attention_backend=backend,
                        **SMALL_GRAPHS) as engine:
        sched = engine.scheduler
        errors, armed = [], threading.Event()
        launch_decode = sched._launch_decode

        def strict_launch(reqs):
            if len(reqs) == len(prompts) and not armed.is_set():
                armed.set()
                torch.cuda.set_sync_debug_mode("error")  # the mode is per process; the scheduler thread owns the work
            return launch_decode(reqs)

        sched._launch_decode = strict_launch
        params = [{"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
                  {"max_new_tokens": 24, "temperature": 0.8, "top_p": 0.9, "seed": 1, "ignore_eos": True}]
        try:
            outs = engine.generate(input_ids=prompts, sampling_params=[params[i % 2] for i in range(len(prompts))],
                                   return_logprob=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            sched._launch_decode = launch_decode
        assert armed.is_set()
        for out in outs:
            assert out["meta_info"]["finish_reason"]["type"] == "length", out["meta_info"]["finish_reason"]


@pytest.mark.gpu
def test_flashinfer_cuda_graphs_match_eager(tiny_model_dir):
    """FlashInfer decode replayed from CUDA graphs (one planned wrapper per captured batch size,
    padded batches) gives the tokens and logprobs of FlashInfer run eagerly. bfloat16 (the dtype the
    benchmark compiles FlashInfer's kernels for): a near-tie may flip late, so tokens must agree for
    the first 4 steps and logprobs wherever the tokens agree."""
    pytest.importorskip("flashinfer")
    from tests.integration.engine_helpers import checked_engine

    # head_dim 128: a size FlashInfer's kernels are built for
    path = tiny_model_dir("llama", hidden_size=512, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=1024)
    prompts = [[5 + (7 * i + j) % 300 for j in range(3 + 11 * i)] for i in range(5)]  # 5 rows: padded to 8
    params = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    results = {}
    for graphs in (True, False):
        with checked_engine(model_path=path, dtype="bfloat16", device="cuda", attention_backend="flashinfer",
                            disable_cuda_graph=not graphs) as engine:
            assert (engine.runner.cuda_graph is not None) == graphs
            outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
            results[graphs] = [(o["output_ids"], [lp for lp, _, _ in o["meta_info"]["output_token_logprobs"]]) for o in outs]
    for (ids_g, lps_g), (ids_e, lps_e) in zip(results[True], results[False]):
        same = next((i for i, (a, b) in enumerate(zip(ids_g, ids_e)) if a != b), len(ids_e))
        assert same >= 4, (ids_g, ids_e)
        assert torch.allclose(torch.tensor(lps_g[:same]), torch.tensor(lps_e[:same]), atol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_kv_store_rounds_like_torch_and_the_engine_serves_from_it(setup, dtype):
    """The GPU's conversion (unlike Triton's CPU interpreter) must round as torch's cast does; and the
    engine with an fp8 pool runs greedy decode with and without CUDA graphs to the same tokens."""
    from runtime.attention.triton.kv_store import store_kv
    from tests.integration.engine_helpers import checked_engine

    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(64, 8, 128, device="cuda", generator=gen, dtype=torch.bfloat16) * 3
    v = torch.randn(64, 8, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    k_buffer = torch.zeros(100, 8, 128, dtype=dtype, device="cuda")
    v_buffer = torch.zeros_like(k_buffer)
    loc = torch.randperm(100, device="cuda", generator=gen)[:64]
    store_kv(k_buffer, v_buffer, loc, k, v)
    assert torch.equal(k_buffer[loc].float(), k.float().to(dtype).float())
    assert torch.equal(v_buffer[loc].float(), v.float().to(dtype).float())

    path, prompts, _ = setup
    kv = {torch.float8_e4m3fn: "fp8_e4m3", torch.float8_e5m2: "fp8_e5m2"}[dtype]
    outs = []
    for graphs_off in (False, True):
        with checked_engine(model_path=path, dtype="bfloat16", kv_cache_dtype=kv, disable_cuda_graph=graphs_off,
                            **SMALL_GRAPHS) as engine:
            got = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True})
            outs.append([g["output_ids"] for g in got])
    assert outs[0] == outs[1]
