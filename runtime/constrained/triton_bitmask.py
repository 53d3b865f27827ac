"""Triton kernel: apply a packed token bitmask to logits in place (CUDA; CPU under TRITON_INTERPRET=1).

Grid: (rows, ceil(V / BLOCK)). Each program reads BLOCK bits of one row's mask and writes -inf only
where a token is disallowed, so allowed logits are never touched.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _apply_bitmask_kernel(
    logits_ptr,
    bitmask_ptr,
    rows_ptr,
    num_tokens,
    num_words,
    logits_stride,
    bitmask_stride,
    HAS_ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if HAS_ROWS:
        row = tl.load(rows_ptr + tl.program_id(0)).to(tl.int64)
    else:
        row = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_logits = offsets < num_tokens
    word_index = offsets // 32
    words = tl.load(bitmask_ptr + row * bitmask_stride + word_index, mask=in_logits & (word_index < num_words), other=0)
    allowed = (words >> (offsets % 32)) & 1
    neg_inf = tl.full((BLOCK,), float("-inf"), dtype=logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * logits_stride + offsets, neg_inf, mask=in_logits & (allowed == 0))


def apply_token_bitmask_triton_(
    logits: torch.Tensor, bitmask: torch.Tensor, rows_with_grammar: Optional[torch.Tensor] = None
) -> None:
    """Same contract as bitmask.apply_token_bitmask_; logits must have unit stride along the vocab."""
    if logits.stride(1) != 1 or bitmask.stride(1) != 1:
        raise ValueError("apply_token_bitmask_triton_ needs logits and bitmask contiguous along the vocab")
    num_rows = logits.shape[0] if rows_with_grammar is None else rows_with_grammar.numel()
    if num_rows == 0:
        return
    rows = rows_with_grammar if rows_with_grammar is not None else bitmask  # any pointer when unused
    grid = (num_rows, triton.cdiv(logits.shape[1], BLOCK))
    _apply_bitmask_kernel[grid](
        logits,
        bitmask,
        rows,
        logits.shape[1],
        bitmask.shape[1],
        logits.stride(0),
        bitmask.stride(0),
        HAS_ROWS=rows_with_grammar is not None,
        BLOCK=BLOCK,
    )
