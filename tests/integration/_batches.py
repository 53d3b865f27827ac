"""Test helper: turn "these requests add these tokens" into ForwardBatches over a real KV pool.

    builder = BatchBuilder(config)
    a, b = builder.add_request(), builder.add_request()
    logits = forward_logits(model, builder.extend({a: ids_a[:25], b: ids_b[:10]}))  # one extend batch
    logits = forward_logits(model, builder.decode({a: ids_a[25], b: ids_b[10]}))  # one decode step

The builder owns a KVPool, a ReqToTokenPool and a TokenSlotAllocator, allocates slots for every new
token, writes them into the request's row of req_to_token and tracks each request's length, as the
scheduler will.
"""

from __future__ import annotations

from typing import Sequence

import torch

from runtime.cache.pool import KVPool, ReqToTokenPool, TokenSlotAllocator
from runtime.forward_batch import ForwardBatch, ForwardMode


class BatchBuilder:
    def __init__(
        self,
        config,  # runtime.model.config.ModelConfig
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        max_total_tokens: int = 1024,
        max_context_len: int = 512,
        max_requests: int = 8,
    ):
        self.device = torch.device(device)
        self.kv_pool = KVPool(
            max_total_tokens, config.num_layers, config.num_kv_heads, config.head_dim, dtype, self.device
        )
        self.req_pool = ReqToTokenPool(max_requests, max_context_len, self.device)
        self.allocator = TokenSlotAllocator(max_total_tokens, self.device)
        self.seq_lens: dict[int, int] = {}  # row → tokens in the KV pool

    def add_request(self) -> int:
        row = self.req_pool.allocate()
        self.seq_lens[row] = 0
        return row

    def free(self, row: int) -> None:
        self.allocator.free(self.req_pool.read(row, self.seq_lens.pop(row)))
        self.req_pool.free(row)

    def extend(self, new_tokens: dict[int, Sequence[int]]) -> ForwardBatch:
        """One extend batch: each request appends its tokens after what it already holds."""
        return self._build(ForwardMode.EXTEND, {row: list(ids) for row, ids in new_tokens.items()})

    def decode(self, tokens: dict[int, int]) -> ForwardBatch:
        """One decode step: each request appends exactly one token."""
        return self._build(ForwardMode.DECODE, {row: [int(token)] for row, token in tokens.items()})

    def _build(self, mode: ForwardMode, new_tokens: dict[int, list[int]]) -> ForwardBatch:
        rows = list(new_tokens)
        prefix_lens = [self.seq_lens[row] for row in rows]
        extend_lens = [len(new_tokens[row]) for row in rows]
        input_ids, positions, out_cache_loc = [], [], []
        for row, prefix_len, ids in zip(rows, prefix_lens, new_tokens.values()):
            slots = self.allocator.allocate(len(ids))
            self.req_pool.write(row, prefix_len, slots)
            self.seq_lens[row] = prefix_len + len(ids)
            input_ids += ids
            positions += range(prefix_len, prefix_len + len(ids))
            out_cache_loc.append(slots)
        seq_lens = [p + n for p, n in zip(prefix_lens, extend_lens)]
        on_device = lambda values, dtype: torch.tensor(values, dtype=dtype, device=self.device)  # noqa: E731
        batch = ForwardBatch(
            mode=mode,
            batch_size=len(rows),
            input_ids=on_device(input_ids, torch.int64),
            positions=on_device(positions, torch.int64),
            req_pool_indices=on_device(rows, torch.int64),
            seq_lens=on_device(seq_lens, torch.int32),
            out_cache_loc=torch.cat(out_cache_loc).to(torch.int64),
            req_to_token=self.req_pool.req_to_token,
            kv_pool=self.kv_pool,
            seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int64),
        )
        if mode is ForwardMode.EXTEND:
            batch.extend_prefix_lens = on_device(prefix_lens, torch.int32)
            batch.extend_seq_lens = on_device(extend_lens, torch.int32)
            batch.extend_prefix_lens_cpu = torch.tensor(prefix_lens, dtype=torch.int64)
            batch.extend_seq_lens_cpu = torch.tensor(extend_lens, dtype=torch.int64)
        return batch


@torch.no_grad()
def forward_logits(model, batch: ForwardBatch) -> torch.Tensor:
    """Run one step the way the model runner does (prepare the backend, forward) → logits [T, vocab]
    float32 for every new token of the batch."""
    model.attn_backend.prepare(batch)
    hidden = model(batch.input_ids, batch.positions, batch)
    return model.compute_logits(hidden)
