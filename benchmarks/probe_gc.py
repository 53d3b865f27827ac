"""What Python's cyclic collector costs the offline run on a GPU: one engine, the offline workload run
with the collector as the engine leaves it (start-up frozen, automatic collections on), with it off
for the run, and with it off but young generations collected right after each batch is queued (the
CPU then has a whole forward pass of slack). Alternated so the card's drift spreads over all three.

    python benchmarks/probe_gc.py [--out DIR] [--requests 1000] [--rounds 2]

gc.callbacks time every collection in each run: count, total and longest pause per generation.
A pause while the CPU is queueing an eager (prefill) forward leaves the GPU idle; this tells whether
the ~5 ms idle gaps in the offline ledger are the collector's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_gpu import env, model_dir, workload  # noqa: E402
from runtime import Engine  # noqa: E402


class PauseClock:
    """Collections seen through gc.callbacks: per generation, how many and how long."""

    def __init__(self):
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def __call__(self, phase, info):
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self.started)

    def summary(self) -> dict:
        return {f"gen{g}": {"count": len(p), "total_ms": round(1e3 * sum(p), 1),
                            "max_ms": round(1e3 * max(p, default=0.0), 2)} for g, p in self.pauses.items()}


def _boundary_collections(scheduler, young_limit: int):
    """Wrap the scheduler's launch: once enough young objects piled up, collect generations 0 and 1
    right after a batch is queued, while the device is busy with it."""
    launch = scheduler._launch

    def launch_then_collect():
        launched = launch()
        if launched is not None and gc.get_count()[0] > young_limit:
            gc.collect(1)
        return launched

    scheduler._launch = launch_then_collect
    return launch


def _run(engine, reqs, mode: str) -> dict:
    engine.flush_cache()
    gc.collect()
    params = [{"max_new_tokens": m, "temperature": 0, "ignore_eos": True} for _, m in reqs]
    clock = PauseClock()
    original = None
    if mode != "auto":
        gc.disable()
    if mode == "boundary":
        original = _boundary_collections(engine.scheduler, 2000)
    gc.callbacks.append(clock)
    try:
        start = time.perf_counter()
        outs = engine.generate(input_ids=[r[0] for r in reqs], sampling_params=params)
        seconds = time.perf_counter() - start
    finally:
        gc.callbacks.remove(clock)
        gc.enable()
        if original is not None:
            engine.scheduler._launch = original
    tokens = sum(len(o["output_ids"]) for o in outs)
    return {"mode": mode, "seconds": round(seconds, 2), "output_tok_s": round(tokens / seconds, 1),
            "collections": clock.summary()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    card = env()
    print("env", card, flush=True)
    engine = Engine(model_path=model_dir(tempfile.mkdtemp()), load_format="dummy")
    reqs = workload(args.requests)
    results = {"env": card, "runs": [], "thresholds": gc.get_threshold()}
    try:
        _run(engine, reqs[:64], "auto")  # warm: compiles and allocator
        for _ in range(args.rounds):
            for mode in ("auto", "off", "boundary"):
                row = _run(engine, reqs, mode)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
        engine.check_integrity()
    finally:
        engine.shutdown()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gc.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
