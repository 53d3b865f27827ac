"""CPU benchmark: HF transformers `generate` vs our Engine on the same tiny model, same requests.

    python benchmarks/bench_engine_cpu.py [--num-prompts 64] [--max-new-tokens 128] [--out DIR]

The workload is what a serving engine sees: 64 prompts of mixed lengths, each with its own output
budget (uniform in [8, max_new_tokens]), greedy, EOS ignored so both sides produce the same tokens.
HF generates in left-padded batches (its plain path; a batch runs until its longest request is done,
and only each request's own budget counts as output); ours gets all requests at once and schedules
them itself. Each side runs in its own subprocess so peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_prompts(num: int, seed: int = 0) -> list[str]:
    from runtime.model.tiny import training_corpus

    rng = random.Random(seed)
    lines = training_corpus(num_lines=400, seed=seed + 1)
    return [" ".join(rng.choices(lines, k=rng.randint(1, 8))) for _ in range(num)]


def make_budgets(num: int, max_new: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed + 7)
    return [rng.randint(8, max_new) for _ in range(num)]


def run_hf(model_dir: str, prompts: list[str], budgets: list[int], batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    start = time.perf_counter()
    tokens = 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True)
            longest = max(budgets[i : i + batch_size])
            model.generate(**enc, max_new_tokens=longest, min_new_tokens=longest, do_sample=False,
                           pad_token_id=tok.pad_token_id)
            tokens += sum(budgets[i : i + batch_size])
    return {"seconds": time.perf_counter() - start, "output_tokens": tokens}


def run_engine(model_dir: str, prompts: list[str], budgets: list[int]) -> dict:
    from runtime import Engine

    with Engine(model_path=model_dir, dtype="float32") as engine:
        engine.generate(prompt="warm up", sampling_params={"max_new_tokens": 2})
        engine.flush_cache()
        start = time.perf_counter()
        params = [{"max_new_tokens": n, "temperature": 0, "ignore_eos": True} for n in budgets]
        outs = engine.generate(prompt=prompts, sampling_params=params)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "output_tokens": sum(len(o["output_ids"]) for o in outs)}


def child(args) -> None:
    prompts = make_prompts(args.num_prompts)
    budgets = make_budgets(args.num_prompts, args.max_new_tokens)
    if args.child == "hf":
        result = run_hf(args.model, prompts, budgets, args.hf_batch_size)
    else:
        result = run_engine(args.model, prompts, budgets)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hf-batch-sizes", default="16,64", help="HF batch sizes tried; the best counts")
    parser.add_argument("--model", default=None)
    parser.add_argument("--child", choices=["hf", "engine"], default=None)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.model is None:
        from runtime.model.tiny import build_tiny_model

        args.model = build_tiny_model(tempfile.mkdtemp(), arch="llama", hidden_size=128, num_layers=4,
                                      num_heads=4, num_kv_heads=2, intermediate_size=256)
    results = {}
    sides = [("engine", "engine", 0)] + [(f"hf generate (batch {b})", "hf", int(b)) for b in args.hf_batch_sizes.split(",")]
    for name, side, batch in sides:
        cmd = [sys.executable, __file__, "--child", side, "--model", args.model, "--num-prompts",
               str(args.num_prompts), "--max-new-tokens", str(args.max_new_tokens), "--hf-batch-size", str(batch)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[name] = json.loads(out)
    for r in results.values():
        r["tokens_per_s"] = r["output_tokens"] / r["seconds"]
    best_hf = max(v["tokens_per_s"] for k, v in results.items() if k.startswith("hf"))
    ratio = results["engine"]["tokens_per_s"] / best_hf
    print("| side | output tokens | seconds | tokens/s | peak RSS MiB |\n|---|---|---|---|---|")
    for side, r in results.items():
        print(f"| {side} | {r['output_tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} |")
    print(f"ratio engine / best HF generate: {ratio:.2f}x")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_engine_cpu.json"), "w") as f:
            json.dump({"results": results, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
