"""Where the GPU time goes, on the Llama-3-8B-shaped dummy model (bf16): a diagnostic, not the
benchmark of record (that is bench_gpu.py).

    python benchmarks/profile_gpu.py --out $OUT [--sections kernels,gemv,overlap,json,offline]

  syncs     host-device synchronisations during decode, by source line (overlap needs none)
  kernels   CUDA time per kernel name in one batch-1 decode step at 1k context (graphs on). With
            programmatic dependent launch a kernel starts before its predecessor ends and its time
            includes that wait: run with SGFLOW_DISABLE_PDL=1 for per-kernel times (the sum per
            step is then the step's time without PDL)
  kernels_b320  the same for a decode step of 320 requests, contexts U[256, 1536] (offline's mean batch)
  gemv      each projection's M=1 matmul alone, as achieved bandwidth vs device copy bandwidth
  overlap   batch-1 decode tok/s with overlap scheduling on and off (same engine)
  json      JSON-schema decoding at batch 64 and 1: jump-forward on/off vs unconstrained
  offline   300 requests of the offline workload, overlap on and off
  blas      each projection at M = 1 through cuBLAS, cuBLAS GEMV, cuBLASLt and our kernel (past L2)
  phases    the 1,000-request offline workload split into prefill and decode time, against the
            bound that the run's measured matmul rate and copy bandwidth set; 256 vs 512 running
  sustained the gate_up product (N 28672, K 4096) in 2-second loops at M 4096/8192/16384, twice over:
            the rate the card holds under its power limit, against env's short 8192^3 burst
  ledger    (gpu_ledger.py) GPU seconds of the whole offline run by kind of kernel (matmul, decode attention, extend
            attention, elementwise, copies, sampling) for the prefill-only pass and the full run,
            the GPU's idle time (wall minus busy), and the gaps between kernels: their total by
            size and the largest, with the kernels around them (µs, seconds into the run, before,
            after). Run with SGFLOW_DISABLE_PDL=1: with PDL a kernel's time includes its wait for the
            previous one, so sums overcount
  ledger_b1 (gpu_ledger.py) batch-1 decode at 1k context, per step: GPU µs by kind of kernel, the top
            kernels, the idle µs and its gaps, with PDL switched off inside (no env var needed)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks.bench_gpu import RESULTS, env, json_constrained, model_dir, section, workload  # noqa: E402


def kernels(engine):
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(100, 120000, (1024,)).tolist()
    steps = 32
    engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 2, "temperature": 0, "ignore_eos": True})
    params = {"max_new_tokens": steps + 1, "temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=ids, sampling_params=params)  # warm
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(input_ids=ids, sampling_params=params)
    engine.flush_cache()
    return _per_step_table(prof, steps)


def _per_step_table(prof, steps: int) -> dict:
    """CUDA µs per step and launches per step of each kernel name, the 25 costliest."""
    rows = []
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if total:
            rows.append((e.key[:90], round(total / steps, 1), round(e.count / steps, 2)))
    rows.sort(key=lambda r: -r[1])
    return dict(us_per_step_total=round(sum(r[1] for r in rows), 1), top=rows[:25])


def kernels_large_batch(engine, batch=320, steps=8):
    """CUDA time per kernel in one decode step of the offline benchmark's typical batch: `batch`
    requests with contexts uniform in [256, 1536] (the mean decode batch it measured, its context
    spread). The prompts are run once first, so the profiled run prefills one token each from the
    radix cache and then decodes `steps` steps: the table is decode work."""
    import random

    from torch.profiler import ProfilerActivity, profile

    rng = random.Random(5)
    prompts = [[rng.randint(100, 120000) for _ in range(rng.randint(256, 1536))] for _ in range(batch)]
    params = {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True}
    engine.flush_cache()
    engine.generate(input_ids=prompts, sampling_params=params)  # fills the radix cache
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": steps + 1})
    engine.flush_cache()
    return dict(batch=batch, **_per_step_table(prof, steps))


def gemv(copy_tb_s):
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
              "lm_head": (128256, 4096)}
    out = {}
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                torch.nn.functional.linear(x, w)
        graph.replay()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - t) / 200
        tb_s = n * k * 2 / seconds / 1e12
        out[name] = dict(us=round(seconds * 1e6, 1), tb_s=round(tb_s, 2), of_copy=round(tb_s / copy_tb_s, 3))
        del w, x, graph
    return out


def sustained_matmul(seconds=2.0):
    """TFLOP/s of bf16 x[M, 4096] @ W[28672, 4096]^T held for `seconds` per M, twice (a second pass shows
    whether the first was still warming up). Prefill's matmuls run for seconds at a time, so this,
    not a short burst, is the rate that bounds them."""
    res = {}
    w = torch.randn(28672, 4096, device="cuda", dtype=torch.bfloat16)
    for rep in range(2):
        for m in (4096, 8192, 16384):
            x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
            torch.cuda.synchronize()
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                for _ in range(10):
                    x @ w.t()
                torch.cuda.synchronize()
                calls += 10
            res[f"m{m}_pass{rep}"] = round(2 * m * 28672 * 4096 * calls / (time.perf_counter() - start) / 1e12, 1)
    return res


def blas_variants(copy_tb_s):
    """Each decode projection at M = 1 through every matmul route we could dispatch to, with the
    weights streaming from HBM (the graph cycles through copies that overflow L2): cuBLAS via
    F.linear (what the model calls), torch.mv (cuBLAS GEMV), cuBLASLt, and our Triton kernel."""
    import math

    import torch.nn.functional as F

    from runtime.model.gemv import skinny_matmul
    from runtime.model.matmul_choice import graph_time_us

    l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 * 2**20)
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
              "lm_head": (128256, 4096)}
    routes = {"cublas": lambda x, w: F.linear(x, w), "mv": lambda x, w: torch.mv(w, x[0]),
              "skinny": lambda x, w: skinny_matmul(x, w)}
    out = {}
    for name, (n, k) in shapes.items():
        copies = max(1, min(16, math.ceil(4 * l2_bytes / (n * k * 2))))
        weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(copies)]
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        row = {}
        for label, route in routes.items():
            us = graph_time_us(lambda: [route(x, w) for w in weights], reps=2, iters=10) / copies
            row[label] = dict(us=round(us, 2), of_copy=round(n * k * 2 / us / 1e6 / copy_tb_s, 3))
        try:
            torch.backends.cuda.preferred_blas_library("cublaslt")
            us = graph_time_us(lambda: [F.linear(x, w) for w in weights], reps=2, iters=10) / copies
            row["cublaslt"] = dict(us=round(us, 2), of_copy=round(n * k * 2 / us / 1e6 / copy_tb_s, 3))
        except Exception as exc:  # noqa: BLE001 - a diagnostic: record and go on
            row["cublaslt"] = f"FAILED: {exc}"[:200]
        finally:
            torch.backends.cuda.preferred_blas_library("cublas")
        out[name] = row
        del weights
    return out


def _decode_rate(engine, ids, n=256):
    params = {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=ids, sampling_params={**params, "max_new_tokens": 8})
    out = engine.generate(input_ids=ids, sampling_params=params)
    meta = out["meta_info"]
    engine.flush_cache()
    return round((len(out["output_ids"]) - 1) / (meta["e2e_latency"] - meta["ttft"]), 1)


def overlap(engine):
    ids = torch.randint(100, 120000, (1024,)).tolist()
    res = {}
    for label, on in (("overlap_on", True), ("overlap_off", False), ("overlap_on_again", True)):
        engine.scheduler.overlap = on  # read once per step; the engine is idle here
        res[label] = _decode_rate(engine, ids)
    engine.scheduler.overlap = True
    return res


def syncs(engine):
    """Host-device synchronisations during steady decode (each one stalls the overlap): torch's sync
    debug mode warns on every synchronising call; the warning's location names the line."""
    import collections
    import warnings

    ids = torch.randint(100, 120000, (512,)).tolist()
    params = {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}
    engine.generate(input_ids=[ids, ids[:300]], sampling_params=params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            engine.generate(input_ids=[ids, ids[:300], ids[:100]],
                            sampling_params=[params, {**params, "return_logprob": True}, params])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter(f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}" for w in caught
                                if "synchroniz" in str(w.message))
    engine.flush_cache()
    return dict(total=sum(where.values()), by_line=where.most_common(15))


def json_variants(engine):
    res = {}
    for label, jump in (("jump_forward_on", True), ("jump_forward_off", False)):
        engine.scheduler.jump_forward_enabled = jump
        res[f"b64_{label}"] = json_constrained(engine, 64)
        res[f"b1_{label}"] = json_constrained(engine, 1)
    engine.scheduler.jump_forward_enabled = True
    return res


def offline_overlap(engine, n=300):
    reqs = workload(n)
    res = {}
    for label, on in (("overlap_on", True), ("overlap_off", False)):
        engine.scheduler.overlap = on
        engine.flush_cache()
        start = time.perf_counter()
        outs = engine.generate(input_ids=[r[0] for r in reqs],
                               sampling_params=[{"max_new_tokens": m, "temperature": 0, "ignore_eos": True} for _, m in reqs])
        seconds = time.perf_counter() - start
        res[label] = round(sum(len(o["output_ids"]) for o in outs) / seconds, 1)
    engine.scheduler.overlap = True
    return res


def offline_phases(env_result, n=1000):
    """Where the offline benchmark's time goes. A prefill-only pass (1 output token each) times the
    prompts; the full run minus that is decode. The bound is what the card allows for this exact
    workload: every token (prompt or output) costs 2 x params FLOPs at the measured matmul rate, and
    every output token also reads its whole context's K/V at the measured copy bandwidth."""
    import dataclasses

    from runtime import Engine

    engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")  # default caps
    mc = engine.runner.model_config
    params = sum(p.numel() for name, p in engine.runner.model.named_parameters() if "embed_tokens" not in name)
    kv_bytes_per_token = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 2
    reqs = workload(n)
    prompt_tokens = sum(len(p) for p, _ in reqs)
    output_tokens = sum(m for _, m in reqs)
    context_reads = sum(m * len(p) + m * (m - 1) // 2 for p, m in reqs)
    peak_flops, copy_bytes_s = env_result["matmul_tflops"] * 1e12, env_result["copy_tb_s"] * 1e12
    prefill_bound = prompt_tokens * 2 * params / peak_flops
    decode_bound = output_tokens * 2 * params / peak_flops + context_reads * kv_bytes_per_token / copy_bytes_s

    default_cap = engine.config.max_running_requests
    counters = ("num_extend_steps", "extend_tokens", "num_decode_steps", "decode_rows")

    def run(max_new_tokens_of, cap):
        engine.scheduler.config = dataclasses.replace(engine.scheduler.config, max_running_requests=cap)
        engine.flush_cache()
        before = engine.get_stats()
        start = time.perf_counter()
        outs = engine.generate(input_ids=[p for p, _ in reqs], sampling_params=[
            {"max_new_tokens": max_new_tokens_of(m), "temperature": 0, "ignore_eos": True} for _, m in reqs])
        seconds = time.perf_counter() - start
        after = engine.get_stats()
        steps = {k: after[k] - before[k] for k in counters}
        return seconds, sum(len(o["output_ids"]) for o in outs), dict(
            extend_steps=steps["num_extend_steps"], mean_extend_tokens=round(steps["extend_tokens"] / max(1, steps["num_extend_steps"])),
            decode_steps=steps["num_decode_steps"], mean_decode_batch=round(steps["decode_rows"] / max(1, steps["num_decode_steps"]), 1))

    res = dict(prompt_tokens=prompt_tokens, output_tokens=output_tokens, kv_capacity=engine.max_total_tokens,
               bound_prefill_s=round(prefill_bound, 1), bound_decode_s=round(decode_bound, 1),
               bound_output_tok_s=round(output_tokens / (prefill_bound + decode_bound), 1))
    run(lambda m: 1, 256)  # warm-up: allocator, Triton autotuning of extend shapes
    prefill_s, _, steps = run(lambda m: 1, 256)
    res["prefill_only_s"] = round(prefill_s, 1)
    res["prefill_tflops"] = round(prompt_tokens * 2 * params / prefill_s / 1e12, 1)
    res["prefill_only_steps"] = steps
    for cap in (256, 512, default_cap):
        seconds, tokens, steps = run(lambda m: m, cap)
        res[f"running_{cap}"] = dict(seconds=round(seconds, 1), output_tok_s=round(tokens / seconds, 1),
                                     decode_s=round(seconds - prefill_s, 1),
                                     fraction_of_bound=round((prefill_bound + decode_bound) / seconds, 3), **steps)
    engine.check_integrity()
    engine.shutdown()
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--sections", default="syncs,kernels,gemv,overlap,json,offline")
    args = parser.parse_args()
    wanted = set(args.sections.split(","))
    section("env", env)
    copy_tb_s = RESULTS["env"]["copy_tb_s"] if isinstance(RESULTS["env"], dict) else 4.0
    if "gemv" in wanted:
        section("gemv", gemv, copy_tb_s)
    if "blas" in wanted:
        section("blas", blas_variants, copy_tb_s)
    if "sustained" in wanted:
        section("sustained", sustained_matmul)
    if "phases" in wanted:
        section("phases", offline_phases, RESULTS["env"])
    if "ledger" in wanted:
        from benchmarks.gpu_ledger import offline_ledger

        section("ledger", offline_ledger)
    if "ledger_b1" in wanted:
        from benchmarks.gpu_ledger import batch1_ledger

        section("ledger_b1", batch1_ledger)
    if not wanted & {"syncs", "kernels", "kernels_b320", "overlap", "json", "offline"}:
        return _write(args.out)
    from runtime import Engine

    engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")
    for name, fn in (("syncs", syncs), ("kernels", kernels), ("kernels_b320", kernels_large_batch), ("overlap", overlap),
                     ("json", json_variants), ("offline", offline_overlap)):
        if name in wanted:
            section(name, fn, engine)
    engine.check_integrity()
    engine.shutdown()
    _write(args.out)


def _write(out) -> None:
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "profile.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
