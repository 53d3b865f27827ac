"""Deterministic inference against the default engine on a GPU (Llama-3-8B shape, dummy bf16 weights):
what it costs (batch-1 decode and a slice of the offline workload, tokens/s) and what it buys (8
prompts decoded in one batch and alone: requests whose greedy tokens or output logprobs differ).

    python benchmarks/probe_deterministic.py [--out DIR] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_gpu import decode_b1, env, free_memory, model_dir, offline  # noqa: E402
from runtime import Engine  # noqa: E402


def batched_vs_alone(engine, n=8) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 120000, (int(length),), generator=gen).tolist()
               for length in torch.randint(16, 600, (n,), generator=gen)]
    params = dict(sampling_params={"max_new_tokens": 32, "temperature": 0, "ignore_eos": True}, return_logprob=True)
    batched = engine.generate(input_ids=prompts, **params)
    engine.flush_cache()
    alone = [engine.generate(input_ids=p, **params) for p in prompts]
    engine.flush_cache()
    return {"tokens_differ": sum(b["output_ids"] != a["output_ids"] for b, a in zip(batched, alone)),
            "logprobs_differ": sum(b["meta_info"]["output_token_logprobs"] != a["meta_info"]["output_token_logprobs"]
                                   for b, a in zip(batched, alone)),
            "requests": n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    card = env()
    print("env", card, flush=True)
    path = model_dir(tempfile.mkdtemp())
    results = {"env": card}
    for label, deterministic in (("default", False), ("deterministic", True)):
        engine = Engine(model_path=path, load_format="dummy", cuda_graph_max_bs=64, deterministic_inference=deterministic)
        try:
            row = {"batched_vs_alone": batched_vs_alone(engine)}
            print(label, json.dumps(row), flush=True)
            row["decode_b1_1k"] = decode_b1(engine, card["copy_tb_s"])
            print(label, json.dumps(row["decode_b1_1k"]), flush=True)
            row["offline_subset"] = offline(engine, args.requests)
            print(label, json.dumps(row["offline_subset"]), flush=True)
            engine.check_integrity()
        finally:
            engine.shutdown()
            del engine
            free_memory()
        results[label] = row
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "deterministic.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
