"""The main job: run a few generations on the embedded default model and print them.

    sgflow demo [--model PATH] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgflow demo", description=__doc__)
    parser.add_argument("--model", default=None, help="local HF model directory (default: embedded model)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args(argv)

    from runtime import Engine

    start = time.perf_counter()
    with Engine(model_path=args.model) as engine:
        info = engine.get_model_info()
        print(f"model: {info['model_path']} ({info['architecture']}, {info['device']})")
        prompts = ["Q: What is the capital of France? A:", "The cat", '{"name": "']
        params = {"max_new_tokens": args.max_new_tokens, "temperature": 0}
        outs = engine.generate(prompt=prompts, sampling_params=params)
        for prompt, out in zip(prompts, outs):
            meta = out["meta_info"]
            print(f"{prompt!r} -> {out['text']!r}  [{meta['completion_tokens']} tokens, {meta['finish_reason']['type']}]")
        again = engine.generate(prompt=prompts[0] + " Paris.", sampling_params=params)
        print(f"shared prefix served from the radix cache: {again['meta_info']['cached_tokens']} tokens")
        engine.check_integrity()
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0
