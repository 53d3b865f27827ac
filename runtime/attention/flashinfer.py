"""FlashInfer attention (GPU, `pip install sgflow[gpu]`): paged prefill/decode wrappers, page size 1,
planned once per step from the same metadata as our own kernels (FlashInfer's names throughout).

Our KV buffers are [slots, num_kv_heads, head_dim]; as FlashInfer's NHD paged layout with page size 1
they are viewed as [pages = slots, 1, num_kv_heads, head_dim], and page indices are slot indices.
"""

from __future__ import annotations

import torch

from runtime.attention.base import AttentionLayer, BaseAttentionBackend, register_attention_backend
from runtime.attention.triton.backend import gather_kv_indices
from runtime.attention.triton.kv_store import store_kv
from runtime.forward_batch import ForwardBatch

_WORKSPACE_BYTES = 256 * 2**20


def _host_indptr(lengths: torch.Tensor) -> torch.Tensor:
    indptr = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32)
    torch.cumsum(lengths.to(torch.int32), 0, out=indptr[1:])
    return indptr


def graph_workspace_bytes(max_bs: int, layer: AttentionLayer) -> int:
    """Float workspace a graph-mode decode plan of `max_bs` requests needs. In graph mode FlashInfer
    always splits the KV and keeps float32 partial outputs and log-sum-exps for a padded grid of
    query tiles (its scheduler.cuh, 0.6.8): heads x (ceil(bs x group / tile) + bs - 1) x tile rows of
    head_dim + 1 floats. The 8B shape at 512 requests needs ~169 MB; 64 heads at 512, ~405 MB."""
    group = layer.num_heads // layer.num_kv_heads
    tile = 128 if group > 64 and layer.head_dim < 256 else (64 if group > 16 else 16)
    tiles = -(-max_bs * group // tile) + max_bs - 1
    return layer.num_heads * tiles * tile * (layer.head_dim + 1) * 4 + 16 * 2**20  # + alignment slack


@register_attention_backend("flashinfer")
class FlashInferAttention(BaseAttentionBackend):
    def __init__(self, device: torch.device | str = "cuda", **_unused):
        self._use_workspace(torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device))
        self._step = None  # (qo_indptr, kv_indptr, kv_indices, last_page_len, is_decode)
        self._planned = False
        self._plan_copied: dict[int, torch.cuda.Event] = {}  # wrapper id → its last plan's copies

    def _use_workspace(self, workspace: torch.Tensor) -> None:
        """(Re)build the eager wrappers on `workspace`, which graph wrappers share too."""
        import flashinfer

        self.workspace = workspace
        self.eager_decode_wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
        self.decode_wrapper = self.eager_decode_wrapper  # this step's: a graph wrapper on graph steps
        self.prefill_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")

    def prepare(self, batch: ForwardBatch) -> None:
        total = int(batch.seq_lens_cpu.sum())
        _, kv_indices = gather_kv_indices(batch.req_to_token, batch.req_pool_indices, batch.seq_lens, total)
        # NOTE: plan() reads the indptr arrays on the host. Built from host lengths they need no
        # device→host copy, which would wait for the step in flight and undo overlap scheduling.
        kv_indptr = _host_indptr(batch.seq_lens_cpu)
        last_page_len = torch.ones(batch.batch_size, dtype=torch.int32)
        qo_indptr = None if batch.is_decode else _host_indptr(batch.extend_seq_lens_cpu)
        self._step = (qo_indptr, kv_indptr, kv_indices, last_page_len, batch.is_decode)
        self.decode_wrapper = self.eager_decode_wrapper
        self._planned = False  # planning needs head counts and dtypes: done at the first layer

    def _plan(self, q_dtype: torch.dtype, kv_dtype: torch.dtype, layer: AttentionLayer) -> None:
        qo_indptr, kv_indptr, kv_indices, last_page_len, is_decode = self._step
        common = dict(q_data_type=q_dtype, kv_data_type=kv_dtype, sm_scale=layer.scaling)
        wrapper = self.decode_wrapper if is_decode else self.prefill_wrapper
        # NOTE: plan() stages its schedule in the wrapper's pinned host buffer and copies it to the
        # device asynchronously. With overlap scheduling the previous step may still be queued, so
        # wait until that copy has left the buffer before overwriting it (it almost always has).
        previous = self._plan_copied.get(id(wrapper))
        if previous is not None:
            previous.synchronize()
        if is_decode:
            wrapper.plan(kv_indptr, kv_indices, last_page_len, layer.num_heads, layer.num_kv_heads,
                         layer.head_dim, 1, **common)
        else:
            wrapper.plan(qo_indptr, kv_indptr, kv_indices, last_page_len, layer.num_heads,
                         layer.num_kv_heads, layer.head_dim, 1, causal=True, **common)
        event = torch.cuda.Event()
        event.record()
        self._plan_copied[id(wrapper)] = event
        self._planned = True

    def _run(self, wrapper, q, k, v, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        k_buffer = batch.kv_pool.k_buffers[layer.layer_id]
        v_buffer = batch.kv_pool.v_buffers[layer.layer_id]
        store_kv(k_buffer, v_buffer, batch.out_cache_loc, k, v)
        if not self._planned:
            self._plan(q.dtype, k_buffer.dtype, layer)
        paged = (k_buffer.unsqueeze(1), v_buffer.unsqueeze(1))  # [pages, page_size=1, KvH, D]
        return wrapper.run(q.contiguous(), paged)

    def forward_extend(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        return self._run(self.prefill_wrapper, q, k, v, layer, batch)

    def forward_decode(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        return self._run(self.decode_wrapper, q, k, v, layer, batch)

    # ------------------------------------------------------------------ CUDA graphs
    supports_cuda_graph = True

    def init_cuda_graph_state(
        self, max_bs: int, max_context_len: int, device: torch.device, layer: AttentionLayer, dtype: torch.dtype
    ) -> None:
        # NOTE: one wrapper per captured batch size (FlashInfer fixes its grid per batch size in
        # graph mode); all of them read the same static index buffers, whose addresses the
        # captured kernels keep. Replays rewrite only their contents, in plan().
        self._graph_layer, self._graph_dtype = layer, dtype
        need = graph_workspace_bytes(max_bs, layer)
        if need > self.workspace.numel():  # big batches of many heads: every wrapper gets the larger one
            self._use_workspace(torch.zeros(need, dtype=torch.uint8, device=device))
        self._graph_kv_indptr = torch.zeros(max_bs + 1, dtype=torch.int32, device=device)
        self._graph_kv_indices = torch.zeros(max_bs * max_context_len, dtype=torch.int32, device=device)
        self._graph_last_page_len = torch.ones(max_bs, dtype=torch.int32, device=device)
        self._graph_wrappers: dict[int, object] = {}

    def prepare_cuda_graph_decode(self, batch: ForwardBatch) -> None:
        import flashinfer

        bs = batch.batch_size
        wrapper = self._graph_wrappers.get(bs)
        if wrapper is None:
            wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True,
                paged_kv_indptr_buffer=self._graph_kv_indptr[: bs + 1],
                paged_kv_indices_buffer=self._graph_kv_indices,
                paged_kv_last_page_len_buffer=self._graph_last_page_len[:bs],
            )
            self._graph_wrappers[bs] = wrapper
        self.prepare(batch)
        self.decode_wrapper = wrapper
        # plan now: a replay runs no Python, so the first layer cannot plan lazily
        self._plan(self._graph_dtype, self._graph_dtype, self._graph_layer)
