"""bf16 cuBLAS vs fp8 (e4m3) scaled matmuls at the Llama-3-8B projection shapes, on a CUDA GPU.

    python benchmarks/bench_fp8_matmul.py [--out DIR] [--m 8192,2048,512,320,64] [--sections matmul,inputs]

matmul: for each projection and row count M, torch's bf16 linear, torch._scaled_mm with one scale
per tensor and with one scale per row of x and per output channel of the weight (what runtime's fp8
weights use), and our Triton kernel that quantises x's rows (a pass over x before every product).
inputs: the kernels in front of the fp8 products, fused (the norm that rounds its output to e4m3;
silu·mul that does) against the two kernels each replaces, at the 8B widths.
Times are medians of CUDA-graph replays with the weights cycled past L2.
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

from runtime.model.matmul_choice import graph_time_us  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--m", default="8192,2048,512,320,64")
    parser.add_argument("--sections", default="matmul,inputs")
    args = parser.parse_args()
    from runtime.model.fp8 import quantize_rows, quantize_weight

    wanted = set(args.sections.split(","))
    ms = [int(v) for v in args.m.split(",")]
    rows = []
    for m in ms if "matmul" in wanted else []:
        for name, (n, k) in SHAPES.items():
            copies = max(1, min(8, -(-200 * 2**20 // (n * k * 2))))
            ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
            qs = [quantize_weight(w) for w in ws]
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            xq, xs = quantize_rows(x)
            one = torch.ones((), device="cuda")
            flops = 2 * m * n * k
            row = dict(m=m, proj=name)
            variants = {
                "bf16": lambda: [F.linear(x, w) for w in ws],
                "fp8_tensor": lambda: [torch._scaled_mm(xq, q.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16) for q, _ in qs],
                "fp8_rowwise": lambda: [torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s, out_dtype=torch.bfloat16) for q, s in qs],
                "quantize_x": lambda: [quantize_rows(x) for _ in qs],
            }
            for label, fn in variants.items():
                try:
                    us = graph_time_us(fn, reps=2, iters=10) / copies
                    row[label] = round(us, 1)
                    if label != "quantize_x":
                        row[label + "_tflops"] = round(flops / us / 1e6, 1)
                except Exception as exc:  # noqa: BLE001 - record and go on
                    row[label] = f"FAILED {type(exc).__name__}: {str(exc)[:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    # accuracy of the rowwise product against float32 at one shape
    w = torch.randn(4096, 4096, device="cuda") * 0.02
    x = torch.randn(64, 4096, device="cuda")
    want = x @ w.t()
    q, s = quantize_weight(w.bfloat16())
    xq, xs = quantize_rows(x.bfloat16())
    got = torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s, out_dtype=torch.bfloat16).float()
    bf = F.linear(x.bfloat16(), w.bfloat16()).float()
    acc = dict(fp8_rel_err=((got - want).norm() / want.norm()).item(), bf16_rel_err=((bf - want).norm() / want.norm()).item())
    print(json.dumps(acc))
    inputs = input_kernels(ms) if "inputs" in wanted else []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "fp8_matmul.json"), "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows, accuracy=acc, inputs=inputs), f, indent=1)


def input_kernels(ms: list[int], hidden: int = 4096, intermediate: int = 14336) -> list[dict]:
    """µs of the fp8 products' input kernels, fused against unfused (the same bytes come out: the
    engine checks that once per process). Eight copies of each input cycle past L2."""
    from runtime.model import fused
    from runtime.model.fp8 import quantize_rows, silu_mul_quantize_rows

    out = []
    for m in ms:
        xs = [torch.randn(m, hidden, dtype=torch.bfloat16, device="cuda") for _ in range(8)]
        res = torch.randn(m, hidden, dtype=torch.bfloat16, device="cuda")
        norm_w = torch.ones(hidden, dtype=torch.bfloat16, device="cuda")
        gate_ups = [torch.randn(m, 2 * intermediate, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
        variants = {
            "norm_then_quantize": lambda: [quantize_rows(fused.rms_norm(x, norm_w, 1e-5, residual=res)[0]) for x in xs],
            "norm_fp8_fused": lambda: [fused.rms_norm_fp8(x, norm_w, 1e-5, residual=res) for x in xs],
            "silu_mul_then_quantize": lambda: [quantize_rows(fused.silu_and_mul(g)) for g in gate_ups],
            "silu_mul_fp8_fused": lambda: [silu_mul_quantize_rows(g) for g in gate_ups],
        }
        row = dict(m=m)
        for label, fn in variants.items():
            try:
                count = len(xs) if label.startswith("norm") else len(gate_ups)
                row[label] = round(graph_time_us(fn, reps=2, iters=10) / count, 1)
            except Exception as exc:  # noqa: BLE001 - record and go on
                row[label] = f"FAILED {type(exc).__name__}: {str(exc)[:120]}"
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


if __name__ == "__main__":
    main()
