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

    @property
    def is_decode(self) -> bool:
        return self.mode is ForwardMode.DECODE

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device
