"""Where the GPU time goes, on the Llama-3-8B-shaped dummy model (bf16): a diagnostic, not the
benchmark of record (that is bench_gpu.py).

    python benchmarks/profile_gpu.py --out $OUT [--sections kernels,gemv,overlap,json,offline]

  syncs     host-device synchronisations during decode, by source line (overlap needs none)
  kernels   CUDA time per kernel name in one batch-1 decode step at 1k context (graphs on)
  gemv      each projection's M=1 matmul alone, as achieved bandwidth vs device copy bandwidth
  overlap   batch-1 decode tok/s with overlap scheduling on and off (same engine)
  json      JSON-schema decoding at batch 64 and 1: jump-forward on/off vs unconstrained
  offline   300 requests of the offline workload, overlap on and off
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
    rows = []
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if total:
            rows.append((e.key[:90], round(total / steps, 1), round(e.count / steps, 2)))
    rows.sort(key=lambda r: -r[1])
    engine.flush_cache()
    return dict(us_per_step_total=round(sum(r[1] for r in rows), 1), top=rows[:25])


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
    from runtime import Engine

    engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")
    for name, fn in (("syncs", syncs), ("kernels", kernels), ("overlap", overlap), ("json", json_variants), ("offline", offline_overlap)):
        if name in wanted:
            section(name, fn, engine)
    engine.check_integrity()
    engine.shutdown()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "profile.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
