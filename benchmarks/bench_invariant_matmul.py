"""The batch-invariant matmul (deterministic inference) on a GPU: the launch shape invariant_config
picks against the other K tiles and pipelines, at the Llama-3-8B projections, for decode (M = 1, 8) and prefill
(M = 256, 4096) rows, with cuBLAS as the reference rate. Each candidate is checked first: M rows at
once must give the bits of each row alone (the invariance the engine relies on), on this card.

    python benchmarks/bench_invariant_matmul.py [--out DIR] [--m 1,4096]

At one row the product streams the weight, so the table gives the fraction of copy bandwidth; with
many rows it is compute-bound, so TFLOP/s. Weights cycle through copies that overflow L2 (as in
bench_gemv.py), so a small weight does not time at cache speed.
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

from benchmarks.bench_gemv import copies_overflowing_l2, copy_tb_s  # noqa: E402
from runtime.model.invariant_matmul import InvariantConfig, invariant_config, invariant_matmul  # noqa: E402
from runtime.model.matmul_choice import graph_time_us  # noqa: E402
from runtime.triton_interpreter import shared_memory_bytes, sm_count  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}


def candidates(n: int, k: int, num_sms: int, shared_memory: int) -> dict[str, InvariantConfig]:
    """What invariant_config picks, and each (block_k, stages) it chooses among, in its column tile."""
    chosen = invariant_config(n, k, num_sms, torch.bfloat16, shared_memory)
    found = {"chosen": chosen}
    for block_k, stages in ((64, 3), (128, 4), (256, 3)):  # (64, 3): the launch shape before session 11
        config = InvariantConfig(block_n=chosen.block_n, block_k=block_k, num_stages=stages)
        if config != chosen:
            found[f"k{block_k}s{stages}"] = config
    return found


def invariant_on_this_card(x: torch.Tensor, w: torch.Tensor, config: InvariantConfig) -> bool:
    full = invariant_matmul(x, w, config=config)
    return all(torch.equal(invariant_matmul(x[i:i + 1].clone(), w, config=config), full[i:i + 1])
               for i in (0, x.shape[0] // 2, x.shape[0] - 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--m", default="1,4096")
    args = parser.parse_args()
    copy = copy_tb_s()
    num_sms = sm_count(torch.device("cuda"))
    shared_memory = shared_memory_bytes(torch.device("cuda"))
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        ws = copies_overflowing_l2(w)
        probe = torch.randn(64, k, dtype=torch.bfloat16, device="cuda")
        configs = {}
        for label, config in candidates(n, k, num_sms, shared_memory).items():
            try:
                if invariant_on_this_card(probe, w, config):
                    configs[label] = config
                else:
                    print(f"{name} {label}: NOT invariant on this card", flush=True)
            except Exception as exc:  # a shape that does not fit shared memory is skipped
                print(f"{name} {label}: {type(exc).__name__}", flush=True)
        for m in (int(v) for v in args.m.split(",")):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            ref = F.linear(x, w).float()
            row = {"shape": name, "m": m}
            times = {"cublas": graph_time_us(lambda: [F.linear(x, wi) for wi in ws], reps=1, iters=5) / len(ws)}
            for label, config in configs.items():
                err = float((invariant_matmul(x, w, config=config).float() - ref).norm() / ref.norm())
                assert err < 1e-2, (name, m, label, err)
                times[label] = graph_time_us(lambda: [invariant_matmul(x, wi, config=config) for wi in ws],
                                             reps=1, iters=5) / len(ws)
            for label, us in times.items():
                row[label + "_us"] = round(us, 1)
                row[label + ("_of_copy" if m <= 8 else "_tflops")] = round(
                    n * k * 2 / (us * 1e-6) / 1e12 / copy if m <= 8 else 2 * m * n * k / (us * 1e-6) / 1e12, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\ncopy bandwidth {copy:.2f} TB/s on {torch.cuda.get_device_name()}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "invariant_matmul.json"), "w") as f:
            json.dump(dict(copy_tb_s=copy, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
