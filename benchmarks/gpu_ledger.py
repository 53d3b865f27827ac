"""The offline workload's GPU time, accounted (a section of profile_gpu.py, `--sections ledger`):
GPU seconds by kind of kernel for a prefill-only pass and the full run, the GPU's idle time, and the
gaps between kernels that make it up. Run with SGFLOW_DISABLE_PDL=1: with programmatic dependent
launch a kernel's time includes its wait for the previous one, so sums overcount.
"""

from __future__ import annotations

import tempfile
import time

import torch

from benchmarks.bench_gpu import model_dir, workload

KERNEL_KINDS = (  # first match wins; names as CUPTI reports them
    ("decode attention", ("_decode_split_kernel", "_decode_merge_kernel", "BatchDecode")),
    ("extend attention", ("_extend_kernel", "BatchPrefill", "flash")),
    ("matmul", ("nvjet", "gemm", "gemv", "cutlass", "sm90_xmma", "_vector_kernel", "_vector_tma_kernel", "_skinny_matmul_kernel")),
    ("norm/silu/rotary/store", ("_rms_norm", "_silu_mul", "_rotary", "_store_kv", "_add_rms", "_quantize_rows")),
    ("sampling", ("ArgMax", "argmax", "_chunk_argmax", "_pick_chunk", "softmax", "topk", "sort", "_sample", "exponential", "Max", "Sum")),
    ("copies", ("copy", "Memcpy", "memcpy", "Memset", "Cat", "gather", "index", "fill", "_stage_kernel")),
)


def _kind(name: str) -> str:
    for kind, needles in KERNEL_KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


def _profiled_seconds(fn, digits: int = 2) -> dict:
    """Runs fn under the CUDA profiler: wall seconds, GPU busy seconds by kernel kind, top kernels,
    rounded to `digits` decimals (a batch-1 run, divided per step later, needs µs: digits=6)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kinds: dict[str, float] = {}
    top = []
    for e in prof.key_averages():
        total = (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)) / 1e6
        if total:
            kinds[_kind(e.key)] = kinds.get(_kind(e.key), 0.0) + total
            top.append((e.key[:70], round(total, digits + 1), e.count))
    top.sort(key=lambda r: -r[1])
    busy = sum(kinds.values())
    return dict(wall_s=round(wall, digits), gpu_busy_s=round(busy, digits), gpu_idle_s=round(wall - busy, digits),
                by_kind_s={k: round(v, digits) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}, top=top[:15],
                idle_gaps=_idle_gaps(prof, digits=digits + 1))


def _idle_gaps(prof, largest: int = 12, digits: int = 3) -> dict | str:
    """Where the GPU waits: the gaps between consecutive kernels (by time, overlaps merged), their
    total by size, and the largest ones with the kernels on either side and when they happened."""
    from torch.autograd import DeviceType

    try:
        spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                       if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start)
    except Exception as exc:  # noqa: BLE001 - a diagnostic: record and go on
        return f"FAILED: {type(exc).__name__}: {exc}"[:200]
    if not spans:
        return "no kernels recorded"
    gaps, end, before = [], spans[0][1], spans[0][2]
    for start, stop, name in spans[1:]:
        if start > end:
            gaps.append((start - end, end, before, name))
        if stop > end:
            end, before = stop, name
    first = spans[0][0]
    by_size = {f">={t}us": round(sum(g for g, *_ in gaps if g >= t) / 1e6, digits) for t in (1, 10, 100, 1000, 10000)}
    gaps.sort(key=lambda g: -g[0])
    return dict(total_s=round(sum(g for g, *_ in gaps) / 1e6, digits), count=len(gaps), seconds_in_gaps_of=by_size,
                largest=[(round(g), round((at - first) / 1e6, 3), prev[:40], nxt[:40]) for g, at, prev, nxt in gaps[:largest]])


def offline_ledger(n=1000):
    """The offline workload's GPU time by kind of kernel: a prefill-only pass (1 output token each)
    and the full run, both warm, on a fresh engine with default settings. Decode's share is the
    difference. Profiling slows eager (extend) steps a little; the wall times are for reference."""
    from runtime import Engine

    engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")
    reqs = workload(n)

    def run(max_new_tokens_of):
        engine.flush_cache()
        engine.generate(input_ids=[p for p, _ in reqs], sampling_params=[
            {"max_new_tokens": max_new_tokens_of(m), "temperature": 0, "ignore_eos": True} for _, m in reqs])

    run(lambda m: 1)  # warm-up: allocator, Triton autotuning of extend shapes
    res = dict(prefill_only=_profiled_seconds(lambda: run(lambda m: 1)))
    before = engine.get_stats()
    res["full"] = _profiled_seconds(lambda: run(lambda m: m))
    after = engine.get_stats()
    res["full"]["steps"] = {k: after[k] - before[k] for k in ("num_extend_steps", "extend_tokens", "num_decode_steps", "decode_rows")}
    engine.check_integrity()
    engine.shutdown()
    return res


def batch1_ledger(steps: int = 128, context: int = 1024) -> dict:
    """Batch-1 decode at `context` tokens, per step: GPU µs by kind of kernel, the idle µs between
    kernels and the gaps that make it up, with programmatic dependent launch off so that a kernel's
    time is its own (the engine is built after switching it off, so its graphs are captured so). The
    prompt is run once first, so the profiled request prefills one token from the radix cache: the
    table is decode. Set against the step time with PDL on (bench_gpu's decode section), it says
    what the ~0.7 ms a step over the weight-read roofline on the H200 is made of."""
    from runtime import Engine
    from runtime import pdl

    pdl.force(False)
    try:
        engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")
        ids = torch.randint(100, 120000, (context,)).tolist()
        params = {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}
        engine.generate(input_ids=ids, sampling_params=params)  # fills the radix cache
        engine.generate(input_ids=ids, sampling_params={**params, "max_new_tokens": 16})  # warm
        result = _profiled_seconds(
            lambda: engine.generate(input_ids=ids, sampling_params={**params, "max_new_tokens": steps + 1}), digits=6)
        engine.check_integrity()
        engine.shutdown()
    finally:
        pdl.force(None)
    per_step = {"wall_us": result["wall_s"] * 1e6 / steps, "gpu_busy_us": result["gpu_busy_s"] * 1e6 / steps,
                "gpu_idle_us": result["gpu_idle_s"] * 1e6 / steps,
                "by_kind_us": {k: v * 1e6 / steps for k, v in result["by_kind_s"].items()}}
    per_step = {k: ({kk: round(vv, 1) for kk, vv in v.items()} if isinstance(v, dict) else round(v, 1))
                for k, v in per_step.items()}
    top = [(name, round(seconds * 1e6 / steps, 1), round(count / steps, 2)) for name, seconds, count in result["top"]]
    return dict(steps=steps, per_step=per_step, top_us_per_step=top, idle_gaps=result["idle_gaps"])
