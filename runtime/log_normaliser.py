"""Each row's log-softmax normaliser in an order that never depends on the row's neighbours, for
deterministic inference's logprobs.

torch's CUDA log_softmax sums a row in an order that can follow where the row starts in memory, and
for a vocabulary that is not a multiple of 4 that depends on the row's index, so on the batch. Here
one program takes one row and walks it in fixed chunks: row_max, then the sum of exp(x - row_max),
each chunk reduced by the same tree. logprob(x) = (x - row_max) - log(sum), as log_softmax computes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 2048  # logits a program reads at a time


@triton.jit
def _normaliser_kernel(x_ptr, max_ptr, log_sum_ptr, V, stride_row, CHUNK: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_row
    offs = tl.arange(0, CHUNK)
    top = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
    for start in range(0, V, CHUNK):
        top = tl.maximum(top, tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32))
    row_max = tl.max(top, 0)
    total = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, V, CHUNK):
        x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        total += tl.exp(x - row_max)
    tl.store(max_ptr + row, row_max)
    tl.store(log_sum_ptr + row, tl.log(tl.sum(total, 0)))


def log_normalisers(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [N, V] (rows with unit inner stride) → (row_max [N], log_sum [N]) in float32, each row's
    bits independent of the other rows and of where the row sits."""
    if logits.dim() != 2 or logits.stride(-1) != 1:
        raise ValueError(f"log_normalisers takes [N, V] logits with contiguous rows, got shape {tuple(logits.shape)}")
    n, v = logits.shape
    row_max = torch.empty(n, dtype=torch.float32, device=logits.device)
    log_sum = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _normaliser_kernel[(n,)](logits, row_max, log_sum, v, logits.stride(0), CHUNK=CHUNK, num_warps=4)
    return row_max, log_sum
