"""Batch-1 decode with the copy-engine vector kernel among the start-up candidates (the default)
against the plain vector kernel and cuBLAS alone, on a GPU.

    python benchmarks/probe_matmul_choice.py [--out DIR]

Three engines one after another on the dummy 8B model: all candidates, no copy-engine candidates,
all candidates again (the repeat shows the run-to-run spread). Prints, per engine, every projection's
start-up timings (µs at M = 1, with the input the vector kernel fuses charged to cuBLAS), the route
chosen, and bench_gpu's batch-1 decode figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import runtime.model.matmul_choice as matmul_choice  # noqa: E402
from benchmarks.bench_gpu import decode_b1, env, model_dir  # noqa: E402
from runtime import Engine  # noqa: E402

_ALL = matmul_choice.VECTOR_CANDIDATES
_PLAIN = tuple(c for c in _ALL if not c.tma)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    card = env()
    print("env", card, flush=True)
    path = model_dir(tempfile.mkdtemp())
    results = {"env": card}
    for label in ("all_candidates", "no_copy_engine", "all_candidates_again"):
        # choose_matmul_routes reads the candidates when the runner calls it
        matmul_choice.VECTOR_CANDIDATES = _PLAIN if label == "no_copy_engine" else _ALL
        engine = Engine(model_path=path, load_format="dummy")
        routes = {str(k): {"route": str(v), "m1_us": v.m1_us} for k, v in engine.runner.matmul_routes.items()}
        results[label] = {"routes": routes, "decode": decode_b1(engine, card["copy_tb_s"])}
        print(label, json.dumps(results[label]), flush=True)
        engine.shutdown()
        del engine
        torch.cuda.empty_cache()
    matmul_choice.VECTOR_CANDIDATES = _ALL
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "matmul_choice.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
