"""The MLP's gated product on a GPU: cuBLAS's gate_up product followed by the silu·mul kernel (what the
model runs without gated_matmul.py) against silu_mul_matmul in each launch shape, at the Llama-3-8B
gate_up weight (28,672 × 4,096, bf16), from decode batches to prefill chunks (the sizes start-up
times, and some between). Each shape is checked against the unfused result first; the table gives
µs and TFLOP/s, and the route start-up timing would take from these numbers
(gated_choice.route_from_times).

    python benchmarks/bench_gated_matmul.py [--out DIR] [--m 32,128,...] [--explore]

`--explore` adds launch shapes beyond gated_matmul.CANDIDATES, to choose the candidates by. Timings
cycle through weight copies that overflow L2, as in the model where every weight streams from HBM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runtime.model.gated_choice import TIMED_M, route_from_times, time_gated  # noqa: E402
from runtime.model.gated_matmul import CANDIDATES, GatedConfig, fits, silu_mul_matmul  # noqa: E402
from runtime.model.layers import silu_and_mul  # noqa: E402
from runtime.model.matmul_choice import graph_time_us, spin_up  # noqa: E402

GATE_UP = (28672, 4096)
EXPLORE = (
    GatedConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=4),
    GatedConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3, tma=True),
    GatedConfig(block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=4),
    GatedConfig(block_m=128, block_n=64, block_k=64, num_warps=8, num_stages=4, tma=True),
    GatedConfig(block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=3),
    GatedConfig(block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=4, tma=True),
    GatedConfig(block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=4, tma=True),
    GatedConfig(block_m=128, block_n=128, block_k=64, group_m=16, num_warps=8, num_stages=4, tma=True),
    GatedConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=4, tma=True, warp_specialize=True),
    GatedConfig(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=4, tma=True, warp_specialize=True),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--m", default="32,128,512,546,1024,2048,4096,8192")  # TIMED_M and between
    parser.add_argument("--explore", action="store_true")
    args = parser.parse_args()
    n, k = GATE_UP
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
    shapes = [c for c in CANDIDATES + (EXPLORE if args.explore else ()) if fits(c, w)]
    spin_up(w, seconds=1.0)
    rows, timed = [], {}
    for m in (int(v) for v in args.m.split(",")):
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        ref = silu_and_mul(F.linear(x, w)).float()
        flop = 2 * m * n * k
        times = {"cublas_gate_up_only": graph_time_us(lambda: F.linear(x, w), reps=4, iters=5),
                 "cublas": time_gated("cublas", w, m)}
        errors = {}
        for config in shapes:
            try:
                got = silu_mul_matmul(x, w, config).float()
            except Exception as exc:  # a shape that does not build on this card
                print(f"M={m} {config}: {type(exc).__name__}: {exc}", flush=True)
                continue
            errors[str(config)] = round(float((got - ref).norm() / ref.norm()), 5)
            if errors[str(config)] > 1e-2:
                print(f"M={m} {config}: WRONG, relative error {errors[str(config)]}", flush=True)
                continue
            times[config] = time_gated(config, w, m)
        row = {"m": m, "errors": errors}
        for kind, us in times.items():
            row[f"{kind}_us"] = round(us, 1)
            row[f"{kind}_tflops"] = round(flop / (us * 1e-6) / 1e12, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        timed[m] = {kind: us for kind, us in times.items() if kind != "cublas_gate_up_only"}
    on_grid = {m: t for m, t in timed.items() if m in TIMED_M}
    route = route_from_times(on_grid) if on_grid else None
    print(f"\n{torch.cuda.get_device_name()}: route from the timed sizes {sorted(on_grid)}: {route}")
    print(f"{'M':>6} {'cuBLAS':>9} {'+silu':>9} " + " ".join(f"{str(c)[6:]:>22}" for c in shapes))
    for row in rows:
        cells = [row.get(f"{c}_us") for c in shapes]
        print(f"{row['m']:>6} {row['cublas_gate_up_only_us']:>9} {row['cublas_us']:>9} "
              + " ".join(f"{v if v is not None else '-':>22}" for v in cells))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gated_matmul.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows, route=str(route)), f, indent=1, default=str)


if __name__ == "__main__":
    main()
