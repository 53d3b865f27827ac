"""The attention-backend contract and its registry.

A backend owns the metadata of one step: `prepare(batch)` runs once per forward pass (host work,
index building, kernel planning) and every layer then calls `forward(q, k, v, layer, batch)`, which
writes the new K/V into the paged pool at `batch.out_cache_loc` and attends over
[cached prefix + new tokens] read through `batch.req_to_token`.

Metadata names follow FlashInfer's: `qo_indptr` [B+1] (offsets of each request's new tokens),
`kv_indptr` [B+1] (offsets into `kv_indices`), `kv_indices` (all KV slots of the batch, request after
request, in sequence order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from runtime.forward_batch import ForwardBatch


@dataclass(frozen=True)
class AttentionLayer:
    """The static shape of one attention layer, as the backend needs it."""

    layer_id: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float


class BaseAttentionBackend(ABC):
    @abstractmethod
    def prepare(self, batch: ForwardBatch) -> None:
        """Build this step's metadata. Called once per forward pass, before the first layer."""

    @abstractmethod
    def forward_extend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch
    ) -> torch.Tensor:
        """Store k/v at batch.out_cache_loc, then attend: each new token sees its request's cached
        prefix and the new tokens up to itself (causal).
        q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim] → [T, num_heads, head_dim]"""

    @abstractmethod
    def forward_decode(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch
    ) -> torch.Tensor:
        """Store k/v at batch.out_cache_loc, then attend over the request's whole KV (T == B)."""

    def warm_up(self, layer: AttentionLayer, q_dtype: torch.dtype, kv_dtype: torch.dtype, device: torch.device) -> None:
        """Compile, at start-up, the kernel variants a later step may pick (a launch shape chosen per
        step, say), so that no request waits for a compile. Default: nothing to compile."""

    # ------------------------------------------------------------------ CUDA graphs (decode only)
    supports_cuda_graph: bool = False

    def init_cuda_graph_state(
        self, max_bs: int, max_context_len: int, device: torch.device, layer: AttentionLayer, dtype: torch.dtype
    ) -> None:
        """Allocate the static metadata buffers that captured decode graphs read. `layer` is the shape
        every attention layer of the model shares and `dtype` the KV dtype: a backend that plans its
        kernels ahead (FlashInfer) must plan before a replay, where no layer code runs."""
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def prepare_cuda_graph_decode(self, batch: ForwardBatch) -> None:
        """Like prepare(), but writes into the static buffers, so a graph captured after one call
        replays correctly after any later call with the same batch size. Runs outside the graph."""
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    # ------------------------------------------------------------------ RoPE on the way into the pool
    def can_fuse_rotary(self, q: torch.Tensor) -> bool:
        """Whether forward() can take this step's q and k before RoPE, with `rotary=(cos, sin)`, and
        rotate them as it writes the KV (saving the model's own rotary pass). Default: no."""
        return False

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """forward_decode or forward_extend. With `rotary` (cos, sin [T, head_dim / 2] float32, the
        rotate-half layout), q and k are not yet rotated: only when can_fuse_rotary(q) said so."""
        if rotary is not None and not self.can_fuse_rotary(q):
            raise ValueError(f"{type(self).__name__} cannot rotate q and k itself; apply RoPE first")
        extra = {} if rotary is None else {"rotary": rotary}
        if batch.is_decode:
            return self.forward_decode(q, k, v, layer, batch, **extra)
        return self.forward_extend(q, k, v, layer, batch, **extra)

    def forward_output_rows(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """forward() for the model's last layer when the step needs only batch.output_rows (an extend
        step, see ForwardBatch.output_lens_cpu): the K/V of every new token is stored, and the output
        is those rows' attention, [R, num_heads, head_dim]. Default: the whole step, then the rows; a
        backend that attends for the rows alone saves the rest."""
        out = self.forward(q, k, v, layer, batch, rotary)
        return out if batch.output_rows is None else out[batch.output_rows]


def build_kv_indices(batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_indptr [B+1] int32 and kv_indices [sum(seq_lens)] int32 from the req→token table."""
    seq_lens = batch.seq_lens_cpu
    kv_indptr = torch.zeros(batch.batch_size + 1, dtype=torch.int32)
    kv_indptr[1:] = torch.cumsum(seq_lens, 0)
    rows = [batch.req_to_token[int(r), : int(n)] for r, n in zip(batch.req_pool_indices.tolist(), seq_lens.tolist())]
    kv_indices = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int32, device=batch.device)
    return kv_indptr.to(batch.device), kv_indices


ATTENTION_BACKENDS: dict[str, Callable[..., BaseAttentionBackend]] = {}


def register_attention_backend(name: str):
    def deco(factory):
        ATTENTION_BACKENDS[name] = factory
        return factory

    return deco


def create_attention_backend(name: str, **kwargs) -> BaseAttentionBackend:
    # Import the implementations lazily: triton and flashinfer are optional.
    if name == "torch_native":
        import runtime.attention.torch_native  # noqa: F401
    elif name == "triton":
        import runtime.attention.triton.backend  # noqa: F401
    elif name == "flashinfer":
        import runtime.attention.flashinfer  # noqa: F401
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention_backend {name!r}; available: torch_native, triton, flashinfer")
    return ATTENTION_BACKENDS[name](**kwargs)
