"""Extend (prefill) attention at the Llama-3-8B head shape (GQA 32/8, head dim 128, bf16), on a GPU.

    python benchmarks/bench_extend.py [--out DIR]

Three batches a server sees: the offline benchmark's prefill step (prompts of 256-1,024 tokens,
~8k tokens, no prefix), the second chunk of a 16k prompt (8k cached + 8k new), and shared-prefix
requests (2,000 cached + 64 new, 64 of them). For each: our Triton kernel in several launch shapes
(one query head per program, or with pack_gqa the whole KV group), checked against a float32 torch
reference first, and FlashInfer's paged prefill on the same pool when it is installed. Times are medians over CUDA-event-timed repeats; TFLOP/s counts the causal
work only (4 * head_dim FLOPs per visible query-key pair and head).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from runtime.attention.triton.extend import ExtendConfig, extend_attention  # noqa: E402

HEADS, KV_HEADS, DIM = 32, 8, 128
CONFIGS = [ExtendConfig(64, 64, 4, 2), ExtendConfig(64, 64, 4, 3), ExtendConfig(128, 64, 8, 3),
           ExtendConfig(128, 64, 4, 3), ExtendConfig(128, 128, 8, 3), ExtendConfig(64, 128, 4, 3),
           ExtendConfig(128, 32, 4, 3),
           # one program per KV group (GQA 4: block_m rows = block_m / 4 tokens x 4 heads)
           ExtendConfig(64, 64, 4, 2, pack_gqa=True), ExtendConfig(128, 64, 4, 3, pack_gqa=True),
           ExtendConfig(128, 64, 8, 3, pack_gqa=True), ExtendConfig(64, 128, 4, 3, pack_gqa=True)]


def cases() -> dict[str, list[tuple[int, int]]]:
    """name -> [(prefix_len, extend_len)] per request."""
    rng = random.Random(0)
    offline, total = [], 0
    while total < 8192:
        n = min(rng.randint(256, 1024), 8192 - total)
        offline.append((0, n))
        total += n
    return {"offline_prefill_8k": offline, "chunk_8k_after_8k": [(8192, 8192)], "prefix_2000_x64": [(2000, 64)] * 64}


def build(reqs, device="cuda"):
    """The pool holds every request's K/V in contiguous slots (what a fresh allocator hands out)."""
    seq_lens = [p + e for p, e in reqs]
    slots = sum(seq_lens)
    k_buf = torch.randn(slots + 1, KV_HEADS, DIM, device=device, dtype=torch.bfloat16)
    v_buf = torch.randn_like(k_buf)
    kv_indices = torch.arange(1, slots + 1, device=device, dtype=torch.int64)
    kv_indptr = torch.tensor([0] + seq_lens, device=device).cumsum(0).to(torch.int32)
    qo_indptr = torch.tensor([0] + [e for _, e in reqs], device=device).cumsum(0).to(torch.int32)
    q = torch.randn(int(qo_indptr[-1]), HEADS, DIM, device=device, dtype=torch.bfloat16)
    return q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices


def reference(reqs, q, k_buf, v_buf, kv_indptr, kv_indices, scale):
    outs, q_at = [], 0
    for i, (prefix, extend) in enumerate(reqs):
        idx = kv_indices[int(kv_indptr[i]) : int(kv_indptr[i + 1])]
        k = k_buf[idx].float().repeat_interleave(HEADS // KV_HEADS, 1).transpose(0, 1)
        v = v_buf[idx].float().repeat_interleave(HEADS // KV_HEADS, 1).transpose(0, 1)
        qq = q[q_at : q_at + extend].float().transpose(0, 1)
        visible = torch.arange(prefix + extend, device=q.device)[None, :] <= (prefix + torch.arange(extend, device=q.device))[:, None]
        outs.append(torch.nn.functional.scaled_dot_product_attention(qq, k, v, attn_mask=visible, scale=scale).transpose(0, 1))
        q_at += extend
    return torch.cat(outs)


def median_us(fn, reps=30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def flashinfer_runner(reqs, q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, scale):
    try:
        import flashinfer
    except ImportError:
        return None
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda"), "NHD")
    wrapper.plan(qo_indptr.cpu(), kv_indptr.cpu(), kv_indices.to(torch.int32), torch.ones(len(reqs), dtype=torch.int32),
                 HEADS, KV_HEADS, DIM, 1, causal=True, q_data_type=q.dtype, kv_data_type=k_buf.dtype, sm_scale=scale)
    paged = (k_buf.unsqueeze(1), v_buf.unsqueeze(1))
    return lambda: wrapper.run(q, paged)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    scale = DIM**-0.5
    results = {}
    for name, reqs in cases().items():
        q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices = build(reqs)
        max_extend = max(e for _, e in reqs)
        flops = 4 * DIM * HEADS * sum(e * p + e * (e + 1) // 2 for p, e in reqs)
        ref = reference(reqs, q, k_buf, v_buf, kv_indptr, kv_indices, scale)
        row = {"requests": len(reqs), "new_tokens": int(qo_indptr[-1]), "gflop": round(flops / 1e9, 1)}
        for cfg in CONFIGS:
            label = f"triton_m{cfg.block_m}_n{cfg.block_n}_w{cfg.num_warps}_s{cfg.num_stages}" + ("_gqa" * cfg.pack_gqa)

            def run(cfg=cfg):
                return extend_attention(q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, scale, max_extend, config=cfg)

            err = (run().float() - ref).abs().max().item()
            us = median_us(run)
            row[label] = dict(us=round(us, 1), tflops=round(flops / us / 1e6, 1), max_abs_err=round(err, 4))
        fi = flashinfer_runner(reqs, q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, scale)
        if fi is not None:
            err = (fi().float() - ref).abs().max().item()
            us = median_us(fi)
            row["flashinfer"] = dict(us=round(us, 1), tflops=round(flops / us / 1e6, 1), max_abs_err=round(err, 4))
        results[name] = row
        print(name, json.dumps(row), flush=True)
    print(f"\n{'case':<22}" + "".join(f"{k[7:] if k.startswith('triton_') else k:>16}" for k in row if isinstance(row[k], dict)))
    for name, row in results.items():
        print(f"{name:<22}" + "".join(f"{v['tflops']:>16}" for v in row.values() if isinstance(v, dict)))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "extend.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
