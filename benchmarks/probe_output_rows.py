"""The last layer run for the sampled rows only (ForwardBatch.output_rows) against the full pass, on
one engine, on a GPU: the offline workload's prompts alone (max_new_tokens = 1, so the steps are
prefill) and the whole offline workload, with the option toggled between runs (on, off, on, off).

    python benchmarks/probe_output_rows.py [--out DIR] [--requests 1000]

One engine, so start-up, routes and compiled kernels are the same for both; alternating spreads the
card's drift over both. It also counts the requests whose first token differs between the two: fewer
rows can take other matmul kernels (one row: the vector kernel), so a few near-ties may flip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_gpu import env, model_dir, workload  # noqa: E402
from runtime import Engine  # noqa: E402


def _run(engine, reqs, max_new_tokens=None) -> tuple[float, list[int], int]:
    engine.flush_cache()  # no prefix hits from the previous run
    params = [{"max_new_tokens": max_new_tokens or m, "temperature": 0, "ignore_eos": True} for _, m in reqs]
    start = time.perf_counter()
    outs = engine.generate(input_ids=[r[0] for r in reqs], sampling_params=params)
    seconds = time.perf_counter() - start
    return seconds, [o["output_ids"][0] for o in outs], sum(len(o["output_ids"]) for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    card = env()
    print("env", card, flush=True)
    engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")
    reqs = workload(args.requests)
    prompt_tokens = sum(len(r[0]) for r in reqs)
    results = {"env": card, "prompt_tokens": prompt_tokens, "prefill_only": [], "offline": []}
    first_tokens = {}
    try:
        _run(engine, reqs[:64], 1)  # warm: compiles and allocator
        for kind, max_new in (("prefill_only", 1), ("prefill_only", 1), ("offline", None)):
            for rows_only in (True, False):
                engine.scheduler.config = engine.scheduler.config.replace(disable_output_rows_only=not rows_only)
                seconds, firsts, tokens = _run(engine, reqs, max_new)
                first_tokens.setdefault(rows_only, firsts)
                row = {"rows_only": rows_only, "seconds": round(seconds, 2),
                       "prompt_tok_s" if kind == "prefill_only" else "output_tok_s":
                           round((prompt_tokens if kind == "prefill_only" else tokens) / seconds, 1)}
                results[kind].append(row)
                print(kind, json.dumps(row), flush=True)
        results["first_tokens_differing"] = sum(a != b for a, b in zip(first_tokens[True], first_tokens[False]))
        print("first tokens differing:", results["first_tokens_differing"], "of", len(reqs), flush=True)
        engine.check_integrity()
    finally:
        engine.shutdown()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "output_rows.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
