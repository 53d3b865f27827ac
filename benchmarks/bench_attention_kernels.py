"""Decode attention over a paged KV pool (page size 1, scattered slots): our Triton kernel vs
FlashInfer's BatchDecodeWithPagedKVCacheWrapper, against the copy bandwidth of the same GPU.

    python benchmarks/bench_attention_kernels.py [--out DIR] [--sweep]   # on a CUDA GPU
    python benchmarks/bench_attention_kernels.py --cpu-smoke             # tiny shapes, Triton interpreter

Each timed call is captured in a CUDA graph (launch overhead would dominate small shapes) and
replayed after an L2 flush; times are medians of --iters replays measured with CUDA events.
Achieved bandwidth counts the K/V bytes the call must read (every token's K and V once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory for results.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--sweep", action="store_true", help="also time several block/warp/split configs")
    parser.add_argument("--no-flashinfer", action="store_true", help="skip the FlashInfer baseline")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--shapes", default="64x4096,1x1024,128x1024",
                        help="BATCHxCONTEXT or BATCHxMIN-MAX (ragged),...; a suffix d orders a ragged batch longest "
                             "first, c gives each request contiguous slots (as a fresh pool does) instead of scattered")
    parser.add_argument("--heads", default="32/8", help="query heads/KV heads")
    parser.add_argument("--head-dim", type=int, default=128)
    return parser.parse_args(argv)


if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton (and our kernels) are imported
sys.path.insert(0, str(ROOT))

import torch

from runtime.attention.triton.decode import DecodeConfig, decode_attention
from runtime.attention.triton.splits import choose_num_splits

# (block_n, num_warps, num_stages) × forced split counts tried by --sweep
SWEEP_CONFIGS = [(32, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2), (128, 8, 2), (128, 8, 3)]
SWEEP_SPLITS = [1, 2, 4, 8, 16, 32]


class Problem:
    """Pool, slot table and queries of one decode step: B requests × context tokens each."""

    def __init__(self, batch_size, context_len, num_heads, num_kv_heads, head_dim, dtype, device, min_context=None,
                 flags=""):
        """context_len tokens per request, or with min_context lengths uniform in [min_context, context_len]
        (ragged, as a serving batch is). flags: "d" orders the requests longest first (so the longest
        programs launch first), "c" gives each request contiguous slots."""
        gen = torch.Generator(device=device).manual_seed(batch_size * 7919 + context_len)
        if min_context is None:
            self.lengths = [context_len] * batch_size
        else:
            host_gen = torch.Generator().manual_seed(batch_size + context_len)
            self.lengths = torch.randint(min_context, context_len + 1, (batch_size,), generator=host_gen).tolist()
        if "d" in flags:
            self.lengths.sort(reverse=True)
        num_tokens = sum(self.lengths)
        self.label = f"{batch_size}x{context_len}" if min_context is None else f"{batch_size}x{min_context}-{context_len}"
        self.label += flags
        self.shape = (batch_size, context_len, num_heads, num_kv_heads, head_dim)
        self.scaling = head_dim**-0.5
        pool_shape = (num_tokens + 1, num_kv_heads, head_dim)  # slot 0 = padding slot
        self.k_buffer = torch.randn(pool_shape, generator=gen, device=device).to(dtype)
        self.v_buffer = torch.randn(pool_shape, generator=gen, device=device).to(dtype)
        order = torch.arange(num_tokens, device=device) if "c" in flags else torch.randperm(num_tokens, generator=gen, device=device)
        self.kv_indices = (order + 1).to(torch.int32)
        self.kv_indptr = torch.zeros(batch_size + 1, dtype=torch.int32, device=device)
        self.kv_indptr[1:] = torch.tensor(self.lengths, device=device).cumsum(0)
        self.q = torch.randn((batch_size, num_heads, head_dim), generator=gen, device=device).to(dtype)
        self.kv_bytes = 2 * num_tokens * num_kv_heads * head_dim * self.k_buffer.element_size()

    def reference(self) -> torch.Tensor:
        """float32 attention, one request at a time (ragged lengths, bounded memory): [B, H, D]."""
        batch_size, _, num_heads, num_kv_heads, _ = self.shape
        out = torch.empty(self.q.shape, dtype=torch.float32, device=self.q.device)
        starts = self.kv_indptr.tolist()
        for b in range(batch_size):
            slots = self.kv_indices[starts[b] : starts[b + 1]].long()
            k = self.k_buffer[slots].float().repeat_interleave(num_heads // num_kv_heads, 1)  # [n, H, D]
            v = self.v_buffer[slots].float().repeat_interleave(num_heads // num_kv_heads, 1)
            scores = torch.einsum("hd,nhd->hn", self.q[b].float(), k) * self.scaling
            out[b] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v)
        return out


def time_call(fn, iters: int, device) -> float:
    """Median milliseconds of fn() over `iters` runs (CUDA graph + events on GPU, wall clock on CPU)."""
    fn()
    if device.type != "cuda":
        samples = []
        for _ in range(max(1, iters)):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)
    torch.cuda.synchronize()
    replay = fn
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        replay = graph.replay
    except Exception as error:  # noqa: BLE001 -- some third-party calls cannot be captured: time them eagerly
        print(f"  (not graph-capturable, timed eagerly: {type(error).__name__})")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)  # > L2 of any current GPU
    samples = []
    for _ in range(3 + iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples[3:])


def copy_bandwidth(device, iters: int) -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    samples = []
    for _ in range(max(20, iters)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return 2 * src.numel() / (statistics.median(samples) * 1e-3)


def flashinfer_runner(problem: Problem):
    """A closure running FlashInfer's paged decode on the problem, or None if it is not importable."""
    try:
        import flashinfer
    except Exception as error:  # noqa: BLE001 -- ImportError, or a broken install on this machine
        print(f"  flashinfer unavailable: {type(error).__name__}: {error}")
        return None
    batch_size, _, num_heads, num_kv_heads, head_dim = problem.shape
    device = problem.q.device
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    last_page_len = torch.ones(batch_size, dtype=torch.int32, device=device)
    wrapper.plan(
        problem.kv_indptr, problem.kv_indices, last_page_len, num_heads, num_kv_heads, head_dim, 1,
        sm_scale=problem.scaling, q_data_type=problem.q.dtype, kv_data_type=problem.k_buffer.dtype,
    )
    # NHD pages of size 1: [num_pages, page_size=1, num_kv_heads, head_dim]
    kv_cache = (problem.k_buffer.unsqueeze(1), problem.v_buffer.unsqueeze(1))
    return lambda: wrapper.run(problem.q, kv_cache)


def measure(problem, name, fn, iters, copy_bytes_per_s, reference, config="", num_splits=""):
    device = problem.q.device
    out = fn()
    error = ((out.float() - reference).abs().max() / reference.abs().max()).item()
    ms = time_call(fn, iters, device)
    bandwidth = problem.kv_bytes / (ms * 1e-3)
    row = {
        "shape": problem.label, "impl": name, "config": config, "num_splits": num_splits,
        "ms": ms, "kv_gb_per_s": bandwidth / 1e9, "pct_of_copy": 100 * bandwidth / copy_bytes_per_s,
        "max_rel_err": error,
    }
    print("  " + format_row(row), flush=True)  # progress, in case a later shape fails
    return row


def ours_runner(problem: Problem, config: DecodeConfig, num_splits: int):
    p = problem
    return lambda: decode_attention(
        p.q, p.k_buffer, p.v_buffer, p.kv_indptr, p.kv_indices, p.scaling, num_splits, config=config
    )


def bench_shape(problem, num_sms, iters, copy_bytes_per_s, sweep, with_flashinfer) -> list[dict]:
    batch_size, context_len, _, num_kv_heads, _ = problem.shape
    reference = problem.reference()
    rows = []
    default_splits = choose_num_splits(batch_size, num_kv_heads, context_len, num_sms)
    candidates = [(DecodeConfig(), default_splits)]
    if sweep:
        for block_n, num_warps, num_stages in SWEEP_CONFIGS:
            config = DecodeConfig(block_n, num_warps, num_stages)
            # more splits than KV tiles, or splits that leave the GPU 8x oversubscribed, only add work
            most = min(context_len // config.block_n, max(1, 8 * num_sms // (batch_size * num_kv_heads)))
            candidates += [(config, s) for s in SWEEP_SPLITS if s <= max(1, most)]
    for config, splits in dict.fromkeys(candidates):
        label = f"n{config.block_n}/w{config.num_warps}/s{config.num_stages}"
        rows.append(measure(problem, "triton (ours)", ours_runner(problem, config, splits), iters,
                            copy_bytes_per_s, reference, label, splits))
    runner = flashinfer_runner(problem) if with_flashinfer and problem.q.device.type == "cuda" else None
    if runner is not None:
        rows.append(measure(problem, "flashinfer", runner, iters, copy_bytes_per_s, reference))
    return rows


def format_row(r: dict) -> str:
    return (f"| {r['shape']} | {r['impl']} | {r['config']} | {r['num_splits']} | {r['ms']:.4f} | "
            f"{r['kv_gb_per_s']:.0f} | {r['pct_of_copy']:.1f} | {r['max_rel_err']:.2e} |")


def print_table(rows, copy_bytes_per_s, device_name):
    print(f"\ndevice: {device_name}; copy bandwidth (read+write): {copy_bytes_per_s / 1e9:.0f} GB/s\n")
    print("| shape BxCTX | impl | config | splits | ms | KV GB/s | % of copy | max rel err |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(format_row(r))


def parse_shape(text: str) -> tuple[int, int, int | None, str]:
    """"64x4096" → (64, 4096, None, ""); "448x256-1536dc" → (448, 1536, 256, "dc"): ragged lengths in
    [256, 1536], longest first, contiguous slots."""
    flags = text[len(text.rstrip("dc")):]
    batch, context = text[: len(text) - len(flags)].split("x")
    low, _, high = context.partition("-")
    return (int(batch), int(high), int(low), flags) if high else (int(batch), int(low), None, flags)


def main(args) -> None:
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --cpu-smoke)")
    num_heads, num_kv_heads = (int(x) for x in args.heads.split("/"))
    if args.cpu_smoke:  # bf16 tl.dot is wrong in the interpreter; shapes the interpreter runs in seconds
        shapes, head_dim, dtype, iters = [(2, 64, None, ""), (1, 40, None, ""), (3, 50, 5, "dc")], 32, torch.float32, 2
        num_heads, num_kv_heads, num_sms, copy_bytes_per_s = 4, 2, 4, float("nan")
    else:
        shapes = [parse_shape(s) for s in args.shapes.split(",")]
        head_dim, dtype, iters = args.head_dim, torch.bfloat16, args.iters
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
        copy_bytes_per_s = copy_bandwidth(device, iters)
    rows = []
    for batch_size, context_len, min_context, flags in shapes:
        problem = Problem(batch_size, context_len, num_heads, num_kv_heads, head_dim, dtype, device, min_context, flags)
        print(f"B={batch_size} context={context_len}", flush=True)
        rows += bench_shape(problem, num_sms, iters, copy_bytes_per_s, args.sweep, not args.no_flashinfer)
        del problem
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    print_table(rows, copy_bytes_per_s, device_name)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {
            "device": device_name, "copy_gb_per_s": copy_bytes_per_s / 1e9, "heads": f"{num_heads}/{num_kv_heads}",
            "head_dim": head_dim, "dtype": str(dtype), "torch": torch.__version__, "iters": iters,
        }
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main(parse_args())
