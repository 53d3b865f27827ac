"""Packed token bitmasks: one int32 word per 32 tokens, bit j of word i <-> token 32*i + j (1 = allowed).

The sampler allocates one [batch, words] mask per step, each request's matcher fills its row
(`GrammarMatcher.fill_mask`), and `apply_token_bitmask_` sets the logits of disallowed tokens to -inf.
On CPU that is one vectorised unpack + masked_fill; on CUDA a Triton kernel (triton_bitmask.py).
The logits may be wider than the grammar's vocabulary (padded embedding rows): ids past the mask's
last bit are disallowed.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def allocate_token_bitmask(batch_size: int, vocab_size: int, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """A [batch_size, ceil(vocab_size / 32)] int32 mask with every token allowed (all bits set)."""
    return torch.full((batch_size, (vocab_size + 31) // 32), -1, dtype=torch.int32, device=device)


def apply_token_bitmask_(
    logits: torch.Tensor, bitmask: torch.Tensor, rows_with_grammar: Optional[torch.Tensor] = None
) -> None:
    """In place: logits[r, t] = -inf where bit t of bitmask[r] is 0, for r in rows_with_grammar (all
    rows if None). logits: [B, V_logits] float; bitmask: [B, W] int32 on the same device."""
    _check(logits, bitmask, rows_with_grammar)
    if logits.is_cuda:
        from runtime.constrained.triton_bitmask import apply_token_bitmask_triton_

        apply_token_bitmask_triton_(logits, bitmask, rows_with_grammar)
        return
    if rows_with_grammar is None:
        logits.masked_fill_(~unpack_bitmask(bitmask, logits.shape[1]), float("-inf"))
        return
    rows = rows_with_grammar.to(device=logits.device, dtype=torch.int64)
    blocked = ~unpack_bitmask(bitmask.index_select(0, rows), logits.shape[1])  # [R, V]
    logits.index_copy_(0, rows, logits.index_select(0, rows).masked_fill_(blocked, float("-inf")))


def unpack_bitmask(bitmask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, W] int32 words → [B, num_tokens] bool (True = allowed; False past the mask's last bit)."""
    shifts = _SHIFTS_CACHE.get(bitmask.device)
    if shifts is None:
        shifts = _SHIFTS_CACHE[bitmask.device] = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)  # [B, W*32]
    if bits.shape[1] >= num_tokens:
        return bits[:, :num_tokens]
    pad = torch.zeros(bits.shape[0], num_tokens - bits.shape[1], dtype=torch.bool, device=bits.device)
    return torch.cat([bits, pad], dim=1)


def _check(logits: torch.Tensor, bitmask: torch.Tensor, rows: Optional[torch.Tensor]) -> None:
    if bitmask.dtype != torch.int32 or bitmask.dim() != 2:
        raise ValueError(f"bitmask must be a 2-D int32 tensor, got {bitmask.dtype} {tuple(bitmask.shape)}")
    if logits.dim() != 2 or logits.shape[0] != bitmask.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and bitmask {tuple(bitmask.shape)} disagree on the batch")
    if logits.device != bitmask.device:
        raise ValueError(f"logits are on {logits.device} but the bitmask is on {bitmask.device}")
    if rows is not None and rows.dim() != 1:
        raise ValueError("rows_with_grammar must be a 1-D index tensor")
