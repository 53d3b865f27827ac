"""KV memory: the request→token table, the KV slot allocator, and the per-layer K/V buffers.

Regions of one request's row in `req_to_token` (page size 1, one slot per token):

    | cached prefix (from the radix tree, locked) | own slots (allocated for this req) | unused |
    0                                   cached_len                              seq_len     max_context_len

Slot 0 of the KV buffers is never handed out: padded batch entries (CUDA-graph replay) write there.
"""

from __future__ import annotations

import torch


class ReqToTokenPool:
    """Rows of KV slot indices, one row per running request. Owner: the scheduler."""

    def __init__(self, size: int, max_context_len: int, device: torch.device | str):
        self.size = size
        self.max_context_len = max_context_len
        # req_to_token: [size, max_context_len] int32 slot indices
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=device)
        self._free_rows = list(range(size))
        self.num_reserved = 0

    @property
    def num_free(self) -> int:
        return len(self._free_rows)

    def can_allocate(self, n: int = 1) -> bool:
        return len(self._free_rows) >= n

    def allocate(self) -> int:
        if not self._free_rows:
            raise RuntimeError("request table is full")
        return self._free_rows.pop()

    def free(self, row: int) -> None:
        assert 0 <= row < self.size and row not in self._free_rows, f"double free of row {row}"
        self._free_rows.append(row)

    def reserve(self) -> int:
        """A row held for the pool's lifetime (CUDA-graph padding); never counted as leaked."""
        row = self.allocate()
        self.num_reserved += 1
        return row

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.req_to_token[row, start : start + len(slots)] = slots.to(torch.int32)

    def read(self, row: int, end: int, start: int = 0) -> torch.Tensor:
        return self.req_to_token[row, start:end].to(torch.int64)

    def check_integrity(self) -> None:
        assert len(set(self._free_rows)) == len(self._free_rows), "duplicate free rows"
        assert all(0 <= r < self.size for r in self._free_rows)


class TokenSlotAllocator:
    """Hands out KV slot indices 1..size (0 is the padding slot). Verbs: can_allocate / allocate / free.

    The free list lives on the pool's device so allocation needs no host sync on the GPU.
    """

    def __init__(self, size: int, device: torch.device | str):
        self.size = size
        self.device = torch.device(device)
        self.clear()

    def clear(self) -> None:
        self._free_slots = torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)
        self._released: list[torch.Tensor] = []  # freed chunks, merged lazily (free stays O(1))
        self._num_released = 0

    def _merge(self) -> None:
        if self._released:
            self._free_slots = torch.cat([self._free_slots, *self._released])
            self._released, self._num_released = [], 0

    @property
    def num_free(self) -> int:
        return int(self._free_slots.numel()) + self._num_released

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free

    def allocate(self, n: int) -> torch.Tensor:
        if n > self._free_slots.numel():
            self._merge()
        if n > self._free_slots.numel():
            raise RuntimeError(f"asked for {n} KV slots, {self._free_slots.numel()} free")
        slots, self._free_slots = self._free_slots[:n], self._free_slots[n:]
        return slots

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self._released.append(slots.to(device=self.device, dtype=torch.int64))
            self._num_released += int(slots.numel())

    def free_slot_set(self) -> set[int]:
        self._merge()
        return set(self._free_slots.tolist())

    def check_integrity(self) -> None:
        self._merge()
        free = self._free_slots.tolist()
        assert len(set(free)) == len(free), "a KV slot is free twice"
        assert all(1 <= s <= self.size for s in free), "a free KV slot is out of range"


class KVPool:
    """Per-layer K and V buffers indexed by slot. k_buffers[layer]: [size + 1, num_kv_heads, head_dim]."""

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        self.size = size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        shape = (size + 1, num_kv_heads, head_dim)
        self.k_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        # k, v: [num_tokens, num_kv_heads, head_dim]; loc: [num_tokens]
        self.k_buffers[layer_id][loc] = k.to(self.dtype)
        self.v_buffers[layer_id][loc] = v.to(self.dtype)
