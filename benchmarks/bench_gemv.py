"""Decode-time projections of a Llama-3-8B layer at M = 1..16 rows: cuBLAS (F.linear) vs our Triton
skinny matmul (runtime/model/gemv.py), as achieved weight bandwidth against device copy bandwidth.
At M = 1 skinny_matmul hands over to the vector kernel (runtime/model/matvec.py) in its default
launch shape; benchmarks/bench_pdl.py times that kernel in every shape start-up tries, with PDL.

    python benchmarks/bench_gemv.py [--out DIR] [--m 1,4,16] [--quick]

Each timed call is captured in one CUDA graph (launch cost would dominate otherwise), cycling
through enough copies of the weight to overflow L2 four times over: in the model every weight
streams from HBM, and a 32 MB o_proj repeated in place would time at L2 speed (an earlier version of
this script did that and overstated Triton's o_proj win). The time is the median of 20 replays. "down+silu" feeds [M, 2I] gate|up activations to the fused
kernel and compares with silu_and_mul + F.linear (two kernels).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runtime.model.gemv import GemvConfig, skinny_matmul  # noqa: E402
from runtime.model.matmul_choice import graph_time_us  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def copy_tb_s() -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    us = graph_time_us(lambda: y.copy_(x), reps=5, iters=10)
    return 2 * 2**30 / (us * 1e-6) / 1e12


def copies_overflowing_l2(w: torch.Tensor) -> list[torch.Tensor]:
    """w and enough clones to overflow L2 four times over: cycled through, each streams from HBM."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 * 2**20)
    return [w] + [w.clone() for _ in range(max(0, -(-4 * l2 // (w.numel() * w.element_size())) - 1))]


def configs(quick: bool):
    if quick:
        return [GemvConfig(16, 512, 4, 4), GemvConfig(32, 256, 4, 4)]
    grid = itertools.product((16, 32), (256, 512, 1024), (4, 8), (3, 5))
    return [GemvConfig(bn, bk, w, s) for bn, bk, w, s in grid]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--m", default="1,4,16")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    copy = copy_tb_s()
    rows = []
    for (name, (n, k)), m in itertools.product(
        list(SHAPES.items()) + [("down+silu", SHAPES["down"])], [int(v) for v in args.m.split(",")]
    ):
        fused = name == "down+silu"
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        x = torch.randn(m, 2 * k if fused else k, dtype=torch.bfloat16, device="cuda")
        ws = copies_overflowing_l2(w)
        from runtime.model.fused import silu_and_mul

        def ref_fn():
            for wi in ws:
                out = F.linear(silu_and_mul(x) if fused else x, wi)
            return out

        ref = ref_fn().float()
        cublas_us = graph_time_us(ref_fn, reps=1) / len(ws)
        best = None
        for cfg in configs(args.quick):
            try:
                got = skinny_matmul(x, w, fused, cfg).float()
                err = float((got - ref).norm() / ref.norm())
                us = graph_time_us(lambda: [skinny_matmul(x, wi, fused, cfg) for wi in ws], reps=1) / len(ws)
            except Exception as exc:  # a config that does not compile (shared memory) is skipped
                print(f"  {name} m={m} {cfg}: {type(exc).__name__}", flush=True)
                continue
            if best is None or us < best[0]:
                best = (us, cfg, err)
        gb = n * k * 2 / 1e9
        row = dict(shape=name, m=m, cublas_us=round(cublas_us, 2), cublas_of_copy=round(gb / (cublas_us * 1e-6) / 1e3 / copy, 3))
        if best:
            row.update(triton_us=round(best[0], 2), triton_of_copy=round(gb / (best[0] * 1e-6) / 1e3 / copy, 3),
                       speedup=round(cublas_us / best[0], 3), rel_err=f"{best[2]:.1e}", config=str(best[1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ncopy bandwidth {copy:.2f} TB/s on {torch.cuda.get_device_name()}")
    print("| shape | M | cuBLAS µs (of copy) | Triton µs (of copy) | speedup | config |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['m']} | {r['cublas_us']} ({r['cublas_of_copy']}) | {r.get('triton_us')} "
              f"({r.get('triton_of_copy')}) | {r.get('speedup')} | {r.get('config')} |")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gemv.json"), "w") as f:
            json.dump(dict(copy_tb_s=copy, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
