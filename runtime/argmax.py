"""Row-wise argmax of logits, the greedy token, for small decode batches on the GPU.

torch.argmax over one row of a 128k vocabulary runs in a single thread block: its reduction only
spreads a row over several blocks from 256 values a thread up. On an H200 that took 29 µs of each
batch-1 decode step (`profile_gpu.py --sections kernels`), against the ~4 µs the GPU needs to read
the row. Here each row is cut into chunks that separate programs reduce, and then one program per
row picks among its chunks. Two launches of a few µs each.

The answer is torch's: the first index of the largest value, where a NaN ranks above every number
and -0.0 equals +0.0. The kernels compare int32 keys that order as the floats do, which states those
rules once and makes every comparison exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.pdl import enter_small_kernel

CHUNK = 4096  # logits a program reduces: a 128k vocabulary is 32 programs a row


INT32_MIN = tl.constexpr(-2147483648)  # the masked chunks of stage 2: below every key


@triton.jit
def _order_key(x):
    """float32 → int32 that orders as torch.argmax compares: -0.0 as +0.0, NaN above +inf. Sign and
    magnitude bits to two's complement: a negative float's other bits count down as it grows."""
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 == 0.0: one key for both
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(x != x, 0x7FFFFFFF, key)


@triton.jit
def _chunk_argmax_kernel(logits_ptr, best_ptr, at_ptr, n_cols, stride_row, num_chunks,
                         BLOCK: tl.constexpr, PDL: tl.constexpr):
    enter_small_kernel(PDL)  # see runtime/pdl.py
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(logits_ptr + row * stride_row + cols, mask=cols < n_cols, other=float("-inf"))
    key = _order_key(x)
    at = tl.argmax(key, axis=0, tie_break_left=True)  # a chunk's first column is always a real one
    tl.store(best_ptr + row * num_chunks + chunk, tl.max(key, axis=0))
    tl.store(at_ptr + row * num_chunks + chunk, chunk * BLOCK + at)


@triton.jit
def _pick_chunk_kernel(best_ptr, at_ptr, out_ptr, num_chunks, BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    enter_small_kernel(PDL)  # see runtime/pdl.py
    row = tl.program_id(0).to(tl.int64)
    chunks = tl.arange(0, BLOCK_S)
    best = tl.load(best_ptr + row * num_chunks + chunks, mask=chunks < num_chunks, other=INT32_MIN)
    first = tl.argmax(best, axis=0, tie_break_left=True)  # earlier chunks hold earlier columns
    tl.store(out_ptr + row, tl.load(at_ptr + row * num_chunks + first).to(tl.int64))


def warm_up(vocab_size: int, device: torch.device) -> None:
    """Compile both kernels at start-up, in the specialisation steps use (a float32 row of the
    vocabulary at offset 0), so the first greedy request does not wait for them."""
    chunked_argmax(torch.zeros(1, vocab_size, dtype=torch.float32, device=device))


def chunked_argmax(logits: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """logits [B, V] float32 with unit column stride → argmax over V, [B] int64, by the two kernels."""
    rows, cols = logits.shape
    assert logits.dtype == torch.float32 and logits.stride(-1) == 1 and cols > 0
    num_chunks = triton.cdiv(cols, chunk)
    best = torch.empty(rows, num_chunks, dtype=torch.int32, device=logits.device)  # order keys
    at = torch.empty(rows, num_chunks, dtype=torch.int32, device=logits.device)
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows:
        launch = pdl.launch_args(logits.device)
        _chunk_argmax_kernel[(rows, num_chunks)](logits, best, at, cols, logits.stride(0), num_chunks,
                                                 BLOCK=chunk, **launch)
        _pick_chunk_kernel[(rows,)](best, at, out, num_chunks, BLOCK_S=triton.next_power_of_2(num_chunks), **launch)
    return out
