"""Does a decode step gain from running two halves of its batch at once? (a probe, on a GPU)

    python benchmarks/probe_overlap.py [--out DIR] [--batches 256,512,768]

A decode step at the offline benchmark's batch sizes spends about as long in decode attention
(memory-bound: it reads every context) as in the matmuls (compute-bound at M >= 256). One stream runs
them one after the other. Two halves of the batch are independent until sampling, so half B's matmuls
could run while half A reads its KV. This probe times the Llama-3-8B layer's products and our decode
attention over 32 layers (4 distinct weight sets and KV pools cycled, so nothing stays in L2) as:

- serial: the whole batch on one stream (what the engine does);
- halves: two halves one after the other on one stream (the cost of halving M);
- two streams: each half on its own stream, free-running or with B held one phase behind A;
- with cuBLAS told to leave SMs free (torch's SM carveout) so attention programs find room.

Elementwise kernels are left out: both sides would pay them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from runtime.attention.triton.decode import decode_attention  # noqa: E402
from runtime.attention.triton.splits import choose_num_splits  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS, DIM = 4096, 14336, 32, 8, 128
LAYERS, DISTINCT = 32, 4


class Weights:
    def __init__(self, device):
        def w(n, k):
            return torch.randn(k, n, device=device, dtype=torch.bfloat16) * 0.01  # [K, N]: x @ w

        self.qkv = w((HEADS + 2 * KV_HEADS) * DIM, HIDDEN)
        self.o = w(HIDDEN, HEADS * DIM)
        self.gate_up = w(2 * INTER, HIDDEN)
        self.down = w(HIDDEN, INTER)


class Half:
    """A slice of the decode batch: its query rows and its requests' KV slots in each layer's pool."""

    def __init__(self, lengths, device, gen):
        self.m = len(lengths)
        tokens = sum(lengths)
        self.kv_indptr = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
        self.pools = []
        for _ in range(DISTINCT):
            k = torch.randn(tokens + 1, KV_HEADS, DIM, device=device, dtype=torch.bfloat16, generator=gen)
            v = torch.randn_like(k)
            idx = (torch.randperm(tokens, device=device, generator=gen) + 1).to(torch.int32)
            self.pools.append((k, v, idx))
        self.x = torch.randn(self.m, HIDDEN, device=device, dtype=torch.bfloat16, generator=gen)
        self.max_len = max(lengths)

    def qkv(self, w, x):
        return x @ w.qkv

    def attention(self, layer, qkv, num_sms):
        k, v, idx = self.pools[layer % DISTINCT]
        q = qkv[:, : HEADS * DIM].reshape(self.m, HEADS, DIM)
        splits = choose_num_splits(self.m, KV_HEADS, self.max_len, num_sms)
        return decode_attention(q, k, v, self.kv_indptr, idx, DIM**-0.5, splits).reshape(self.m, HEADS * DIM)

    def mlp(self, w, attn):
        h = attn @ w.o
        gu = h @ w.gate_up
        return gu[:, :INTER] @ w.down  # the silu·mul pass is elementwise work, left out


def run_serial(halves, weights, num_sms):
    for half in halves:  # one half = the whole batch for "serial"
        x = half.x
        for layer in range(LAYERS):
            w = weights[layer % DISTINCT]
            qkv = half.qkv(w, x)
            x = half.mlp(w, half.attention(layer, qkv, num_sms))


def run_halves_interleaved(halves, weights, num_sms):
    xs = [h.x for h in halves]
    for layer in range(LAYERS):
        w = weights[layer % DISTINCT]
        for i, half in enumerate(halves):
            xs[i] = half.mlp(w, half.attention(layer, half.qkv(w, xs[i]), num_sms))


def run_two_streams(halves, weights, num_sms, streams, lag: bool):
    """Half A on streams[0], half B on streams[1]. With lag, B's layer l waits for A's qkv of layer l
    and A's layer l+1 waits for B's attention of layer l, so each attention meets the other's matmuls."""
    a, b = halves
    sa, sb = streams
    main = torch.cuda.current_stream()
    sa.wait_stream(main)
    sb.wait_stream(main)
    xa, xb = a.x, b.x
    b_attn_done = None
    for layer in range(LAYERS):
        w = weights[layer % DISTINCT]
        with torch.cuda.stream(sa):
            if lag and b_attn_done is not None:
                sa.wait_event(b_attn_done)
            qkv_a = a.qkv(w, xa)
            a_qkv_done = torch.cuda.Event()
            a_qkv_done.record(sa)
            xa = a.mlp(w, a.attention(layer, qkv_a, num_sms))
        with torch.cuda.stream(sb):
            if lag:
                sb.wait_event(a_qkv_done)
            attn_b = b.attention(layer, b.qkv(w, xb), num_sms)
            b_attn_done = torch.cuda.Event()
            b_attn_done.record(sb)
            xb = b.mlp(w, attn_b)
    main.wait_stream(sa)
    main.wait_stream(sb)


def time_ms(fn, iters=5):
    fn()
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--batches", default="256,512,768")
    parser.add_argument("--carveouts", default="0,16,32,48")
    parser.add_argument("--min-context", type=int, default=300)
    parser.add_argument("--max-context", type=int, default=1300)
    args = parser.parse_args()
    device = torch.device("cuda")
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    torch.backends.cuda.preferred_blas_library("cublaslt")  # the SM carveout is a cuBLASLt attribute
    weights = [Weights(device) for _ in range(DISTINCT)]
    streams = (torch.cuda.Stream(), torch.cuda.Stream())
    results = {"gpu": torch.cuda.get_device_name(), "sms": num_sms, "batches": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        gen = torch.Generator(device=device).manual_seed(batch)
        host = torch.Generator().manual_seed(batch)
        lengths = torch.randint(args.min_context, args.max_context + 1, (batch,), generator=host).tolist()
        whole = [Half(lengths, device, gen)]
        halves = [Half(lengths[: batch // 2], device, gen), Half(lengths[batch // 2 :], device, gen)]
        row = {}
        # parts alone, to see what could overlap at best
        row["attention_only_ms"] = time_ms(lambda: [whole[0].attention(l, torch.empty(batch, (HEADS + 2 * KV_HEADS) * DIM, device=device, dtype=torch.bfloat16), num_sms) for l in range(LAYERS)])
        def matmuls_only():
            x = whole[0].x
            for layer in range(LAYERS):
                w = weights[layer % DISTINCT]
                x = whole[0].mlp(w, whole[0].qkv(w, x)[:, : HEADS * DIM])

        row["matmul_only_ms"] = time_ms(matmuls_only)
        for carveout in (int(c) for c in args.carveouts.split(",")):
            torch._C._set_sm_carveout_experimental(carveout if carveout else None)
            tag = f"carveout{carveout}"
            row[f"serial_{tag}"] = time_ms(lambda: run_serial(whole, weights, num_sms))
            if carveout == 0:
                row["halves_one_stream"] = time_ms(lambda: run_halves_interleaved(halves, weights, num_sms))
            row[f"two_streams_free_{tag}"] = time_ms(lambda: run_two_streams(halves, weights, num_sms, streams, False))
            row[f"two_streams_lag_{tag}"] = time_ms(lambda: run_two_streams(halves, weights, num_sms, streams, True))
        torch._C._set_sm_carveout_experimental(None)
        results["batches"][batch] = row
        print(f"B={batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
        del whole, halves
        torch.cuda.empty_cache()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "probe_overlap.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
