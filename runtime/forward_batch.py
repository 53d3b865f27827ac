"""What one forward pass sees: the tokens of a batch and where their KV lives.

Built by the model runner from a scheduled batch; read by the model and the attention backend.
Shapes use B = batch size (requests), T = number of new tokens in the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Optional

import torch

from runtime.cache.pool import KVPool


class ForwardMode(Enum):
    EXTEND = auto()  # prefill: each request adds extend_seq_lens[i] tokens after a cached prefix
    DECODE = auto()  # each request adds exactly one token


@dataclass
class ForwardBatch:
    mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, position of each new token in its sequence
    req_pool_indices: torch.Tensor  # [B] int64 rows of req_to_token
    seq_lens: torch.Tensor  # [B] int32, KV length of each request after this step
    out_cache_loc: torch.Tensor  # [T] int64, the KV slot each new token's K/V is written to
    req_to_token: torch.Tensor  # [num_rows, max_context_len] int32 (the pool's table, not a copy)
    kv_pool: KVPool
    seq_lens_cpu: torch.Tensor  # [B] int64 on the host: for planning without a device sync
    # extend only (prefix = tokens already in the KV pool before this step)
    extend_prefix_lens: Optional[torch.Tensor] = None  # [B] int32
    extend_seq_lens: Optional[torch.Tensor] = None  # [B] int32, new tokens per request
    extend_prefix_lens_cpu: Optional[torch.Tensor] = None  # [B] int64
    extend_seq_lens_cpu: Optional[torch.Tensor] = None  # [B] int64
    # Extend steps whose caller needs the final hidden states of only some new tokens: each request's
    # last output_lens_cpu[i] tokens (a prompt's last token for its logits, all of a chunk for prompt
    # logprobs, none mid-prompt). The model then runs its last layer's attention output and MLP on
    # those rows only and returns [R, hidden]. None: every row.
    output_lens_cpu: Optional[torch.Tensor] = None  # [B] int64
    output_rows: Optional[torch.Tensor] = None  # [R] int64 indices into the step's T tokens, ascending

    @property
    def is_decode(self) -> bool:
        return self.mode is ForwardMode.DECODE

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device


def build_forward_batch(
    mode: ForwardMode,
    input_ids: "list[int] | torch.Tensor",
    positions: list[int],
    out_cache_loc: torch.Tensor,
    rows: list[int],
    seq_lens: list[int],
    req_to_token: torch.Tensor,
    kv_pool: KVPool,
    prefix_lens: Optional[list[int]] = None,
    extend_lens: Optional[list[int]] = None,
) -> ForwardBatch:
    """A ForwardBatch from host lists. `input_ids` may already be a device tensor (overlap: tokens
    the previous step sampled and the host has not seen). One host tensor and one non-blocking copy
    carry every per-request integer."""
    device = req_to_token.device
    bsz = len(rows)
    ids_on_device = isinstance(input_ids, torch.Tensor)
    per_req = [rows, seq_lens] + ([prefix_lens, extend_lens] if mode is ForwardMode.EXTEND else [])
    host = torch.tensor(
        ([] if ids_on_device else list(input_ids)) + list(positions) + [v for column in per_req for v in column],
        dtype=torch.int64,
    )
    dev = host if device.type == "cpu" else host.to(device, non_blocking=True)
    num_tokens = len(positions)
    offset = 0 if ids_on_device else num_tokens
    per_req_dev = dev[offset + num_tokens :].view(len(per_req), bsz)
    per_req_cpu = host[offset + num_tokens :].view(len(per_req), bsz)
    batch = ForwardBatch(
        mode=mode,
        batch_size=bsz,
        input_ids=input_ids if ids_on_device else dev[:num_tokens],
        positions=dev[offset : offset + num_tokens],
        req_pool_indices=per_req_dev[0],
        seq_lens=per_req_dev[1].to(torch.int32),
        out_cache_loc=out_cache_loc.to(device),
        req_to_token=req_to_token,
        kv_pool=kv_pool,
        seq_lens_cpu=per_req_cpu[1],
    )
    if mode is ForwardMode.EXTEND:
        batch.extend_prefix_lens_cpu, batch.extend_seq_lens_cpu = per_req_cpu[2], per_req_cpu[3]
        batch.extend_prefix_lens = per_req_dev[2].to(torch.int32)
        batch.extend_seq_lens = per_req_dev[3].to(torch.int32)
    return batch


def keep_output_rows(batch: ForwardBatch, output_lens: list[int]) -> None:
    """Ask for the final hidden states of each request's last output_lens[i] new tokens only (see
    ForwardBatch.output_lens_cpu). A no-op when that is every token."""
    extend_lens = batch.extend_seq_lens_cpu.tolist()
    assert len(output_lens) == len(extend_lens) and all(0 <= k <= n for k, n in zip(output_lens, extend_lens))
    if output_lens == extend_lens:
        return
    rows, offset = [], 0
    for kept, n in zip(output_lens, extend_lens):
        rows.extend(range(offset + n - kept, offset + n))
        offset += n
    host = torch.tensor(rows, dtype=torch.int64)
    batch.output_lens_cpu = torch.tensor(output_lens, dtype=torch.int64)
    batch.output_rows = host if batch.device.type == "cpu" else host.to(batch.device, non_blocking=True)
