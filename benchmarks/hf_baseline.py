"""HF transformers on the benchmark's Llama-3-8B shape: what a user would otherwise run.

`generate` at batch 1 (1k context) and `generate_batch` (HF's continuous batching) on the first n
requests of the offline workload, per attention implementation. `generate_batch` takes one
generation config, so every request generates the largest budget of the n.
"""

from __future__ import annotations

import time

import torch

from benchmarks.bench_gpu import LLAMA3_8B, free_memory, workload


def hf_baselines(path, n_batch, impls=("sdpa", "paged|sdpa")):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in LLAMA3_8B.items() if k != "architectures"})).to(torch.bfloat16).eval()
    out = {}
    ids = torch.randint(100, 120000, (1, 1024), device="cuda")
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        out["generate_b1_1k_tok_s"] = round(64 / (time.perf_counter() - t), 1)
        print(f"  hf generate b1: {out['generate_b1_1k_tok_s']} tok/s", flush=True)
    reqs = workload(n_batch)
    budget = max(m for _, m in reqs)
    gen = GenerationConfig(max_new_tokens=budget, do_sample=False, eos_token_id=-1, pad_token_id=0,
                           num_blocks=8192, block_size=128, max_batch_tokens=8192)
    for impl in impls:
        try:
            model.set_attn_implementation(impl)
            with torch.no_grad():
                t = time.perf_counter()
                res = model.generate_batch(inputs=[r[0] for r in reqs], generation_config=gen)
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            tokens = sum(len(v.generated_tokens) for v in res.values())
            out[f"generate_batch[{impl}]_tok_s"] = round(tokens / seconds, 1)
            print(f"  hf generate_batch[{impl}] {n_batch} requests: {tokens} tokens in {seconds:.1f}s", flush=True)
        except Exception as exc:
            out[f"generate_batch[{impl}]"] = f"error: {exc}"[:200]
    del model
    free_memory()
    return out
