"""TritonAttention: our own kernels (kv_store, extend, decode) behind BaseAttentionBackend."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from runtime.attention.base import AttentionLayer, BaseAttentionBackend, register_attention_backend
from runtime.attention.triton.decode import DecodeConfig, NewKV, decode_attention_table, merge_workspace
from runtime.attention.triton.splits import LengthSplits, choose_num_splits
from runtime.attention.triton.extend import ExtendConfig, default_extend_config, extend_attention
from runtime.attention.triton.kv_store import can_rotate_and_store, rotary_store_agrees, rotary_store_kv, store_kv
from runtime.forward_batch import ForwardBatch
from runtime.triton_interpreter import can_launch_on, sm_count

logger = logging.getLogger(__name__)

DEFAULT_DECODE_CONFIG = DecodeConfig()


@dataclass(frozen=True)
class TritonMetadata:
    """One step's metadata, built by prepare(); FlashInfer's names. Decode steps need only the
    lengths: their kernel reads the req→token table, so the index tensors are None."""

    qo_indptr: torch.Tensor | None  # [B+1] int32 offsets of each request's new tokens in q
    kv_indptr: torch.Tensor | None  # [B+1] int32 offsets of each request's slots in kv_indices
    kv_indices: torch.Tensor | None  # [sum(seq_lens)] int32 KV slots, request after request, in order
    max_seq_len: int
    max_extend_len: int
    # extend steps with ForwardBatch.output_lens_cpu: the kept rows' offsets and longest run
    output_qo_indptr: torch.Tensor | None = None
    max_output_len: int = 0


def gather_kv_indices(
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_indptr [B+1] int32 and kv_indices [total] int32 on the table's device.

    Vectorised (no Python loop per request, no host sync: `total` = sum(seq_lens) comes from the host).
    """
    device = req_to_token.device
    seq_lens = seq_lens.to(device=device, dtype=torch.int64)
    batch_size = seq_lens.shape[0]
    kv_indptr = torch.zeros(batch_size + 1, dtype=torch.int64, device=device)
    torch.cumsum(seq_lens, 0, out=kv_indptr[1:])
    # owner[j]: the request of the j-th entry; its position in the request = j - kv_indptr[owner]
    owner = torch.repeat_interleave(torch.arange(batch_size, device=device), seq_lens, output_size=total)
    positions = torch.arange(total, device=device) - kv_indptr[owner]
    rows = req_pool_indices.to(device=device, dtype=torch.int64)[owner]
    kv_indices = req_to_token[rows, positions].to(torch.int32)
    return kv_indptr.to(torch.int32), kv_indices


def _indptr(lengths: torch.Tensor, device: torch.device) -> torch.Tensor:
    indptr = torch.zeros(lengths.shape[0] + 1, dtype=torch.int64, device=device)
    torch.cumsum(lengths.to(device=device, dtype=torch.int64), 0, out=indptr[1:])
    return indptr.to(torch.int32)


DETERMINISTIC_SPLITS = LengthSplits()  # 1k tokens: 4 splits; 4k and more: 16


@register_attention_backend("triton")
class TritonAttention(BaseAttentionBackend):
    """Split-KV decode and causal extend kernels in Triton over the paged KV pool.

    `num_splits` forces the decode split count (tests, benchmarks); by default it is chosen per step
    from the batch size, the KV heads, the longest sequence and the SM count. `extend_config` forces
    the extend kernel's launch shape; by default it follows the head size (`default_extend_config`).
    `merge_in_split` lets the last split of each request and KV head merge the splits (decode.py),
    so split steps launch one kernel a layer instead of two. `deterministic` (deterministic
    inference) splits each request's KV by its own length, whatever the batch, and extends with every key
    tile on the masked path, whatever the chunk: a row's result then has the same bits alone or in
    any batch, chunked or not. Unknown keyword arguments (device, num_heads, ...) are accepted and
    ignored, like every backend's factory.
    """

    def __init__(
        self,
        num_splits: int | None = None,
        decode_config: DecodeConfig = DEFAULT_DECODE_CONFIG,
        extend_config: ExtendConfig | None = None,
        merge_in_split: bool = True,
        deterministic: bool = False,
        **_unused,
    ):
        self.num_splits = num_splits
        self.deterministic = deterministic
        self.merge_in_split = merge_in_split
        self._arrivals: dict[torch.device, torch.Tensor] = {}  # merge_in_split's counters, per device
        self._outgrown: list[torch.Tensor] = []
        self.decode_config = decode_config
        self.extend_config = extend_config
        self.metadata: TritonMetadata | None = None
        self._step_splits: int | None = None  # set for CUDA-graph steps, where it must not change
        self._rotary_checked = True  # until warm_up checks the fused RoPE + KV write on a GPU
        self._decode_rope_checked = True  # likewise RoPE inside decode attention (NewKV)

    def prepare(self, batch: ForwardBatch) -> None:
        device = batch.req_to_token.device
        if not can_launch_on(device):
            raise RuntimeError("the triton attention backend needs CUDA tensors or TRITON_INTERPRET=1 on CPU")
        seq_lens_cpu = batch.seq_lens_cpu
        max_seq_len = int(seq_lens_cpu.max()) if batch.batch_size else 0
        if batch.is_decode:  # decode reads the req→token table directly: nothing to gather
            self.metadata = TritonMetadata(None, None, None, max_seq_len, 1)
            self._step_splits = None
            return
        total = int(seq_lens_cpu.sum()) if batch.batch_size else 0
        kv_indptr, kv_indices = gather_kv_indices(batch.req_to_token, batch.req_pool_indices, batch.seq_lens, total)
        qo_indptr = _indptr(batch.extend_seq_lens_cpu, device)
        max_extend_len = int(batch.extend_seq_lens_cpu.max()) if batch.batch_size else 0
        kept = batch.output_lens_cpu
        output = {} if kept is None else {"output_qo_indptr": _indptr(kept, device),
                                           "max_output_len": int(kept.max()) if batch.batch_size else 0}
        self.metadata = TritonMetadata(qo_indptr, kv_indptr, kv_indices, max_seq_len, max_extend_len, **output)
        self._step_splits = None

    def _extend_config(self, layer: AttentionLayer) -> ExtendConfig:
        return self.extend_config or default_extend_config(layer.head_dim)

    def warm_up(self, layer: AttentionLayer, q_dtype: torch.dtype, kv_dtype: torch.dtype, device: torch.device) -> None:
        # The extend kernel in its launch shape: otherwise the first prompt waits ~0.3 s for a
        # compile. One token on scratch tensors whose dtypes, strides (multiples of 16) and alignment
        # give the same specialisation as a real step's. Decode compiles when the CUDA graphs are
        # captured.
        q = torch.zeros(1, layer.num_heads, layer.head_dim, dtype=q_dtype, device=device)
        kv = torch.zeros(2, layer.num_kv_heads, layer.head_dim, dtype=kv_dtype, device=device)
        indptr = torch.tensor([0, 1], dtype=torch.int32, device=device)
        slots = torch.ones(1, dtype=torch.int32, device=device)
        extend_attention(q, kv, kv, indptr, indptr, slots, layer.scaling, 1, config=self._extend_config(layer),
                         uniform_tiles=self.deterministic)
        # RoPE in the KV write, checked against torch here once (as the model's fused kernels are):
        # if it disagrees the model rotates q and k itself.
        if can_rotate_and_store(q):
            self._rotary_checked = rotary_store_agrees(layer.num_heads, layer.num_kv_heads, layer.head_dim, q_dtype,
                                                       kv_dtype, device)
            if not self._rotary_checked:
                logger.warning("RoPE in the Triton KV write disagrees with torch on %s; the model rotates instead", device)
            self._decode_rope_checked = self._rotary_checked and decode_rope_agrees(
                layer, q_dtype, kv_dtype, device, self.decode_config)
            if self._rotary_checked and not self._decode_rope_checked:
                logger.warning("RoPE inside Triton decode attention disagrees with rotary_store_kv on %s; not used", device)

    # ------------------------------------------------------------------ CUDA graphs
    supports_cuda_graph = True

    def init_cuda_graph_state(
        self, max_bs: int, max_context_len: int, device: torch.device, layer: AttentionLayer, dtype: torch.dtype
    ) -> None:
        # decode reads the runner's static batch tensors and the req→token table; its one buffer of
        # its own, the merge counters, is made now for every graph's batch size (not while capturing)
        self._graph_max_context_len = max_context_len
        self._merge_counters(max_bs, layer.num_kv_heads, device)
        self._graph_splits: dict[int, int] = {}

    def prepare_cuda_graph_decode(self, batch: ForwardBatch) -> None:
        # Nothing to copy: the captured kernels read the graph's static req_pool_indices and
        # seq_lens, which the runner fills, and the live req→token table. The split count is baked
        # into a captured grid, so it is fixed per batch size (chosen for the longest context); the
        # kernel sizes each request's splits from its own length.
        bs = batch.batch_size
        self.metadata = TritonMetadata(None, None, None, self._graph_max_context_len, 1)
        if bs not in self._graph_splits:
            self._step_splits = None
            self._graph_splits[bs] = self._decode_splits(bs, batch.kv_pool.num_kv_heads, batch.device)
        self._step_splits = self._graph_splits[bs]

    def forward_extend(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch, rotary=None) -> torch.Tensor:
        k_buffer, v_buffer = self._store(q, k, v, layer, batch, rotary)
        meta = self.metadata
        return extend_attention(
            q, k_buffer, v_buffer, meta.qo_indptr, meta.kv_indptr, meta.kv_indices,
            layer.scaling, meta.max_extend_len,
            config=self._extend_config(layer), uniform_tiles=self.deterministic,
        )

    def forward_output_rows(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch, rotary=None) -> torch.Tensor:
        meta = self.metadata
        if batch.is_decode or batch.output_rows is None:
            return self.forward(q, k, v, layer, batch, rotary)
        k_buffer, v_buffer = self._store(q, k, v, layer, batch, rotary)  # every token's K/V (q rotated in place)
        # The kept rows are a suffix of each request's new tokens, so the extend kernel takes them as
        # a shorter extend after a longer prefix (prefix = seq_len - kept), over the same KV.
        return extend_attention(
            q[batch.output_rows], k_buffer, v_buffer, meta.output_qo_indptr, meta.kv_indptr, meta.kv_indices,
            layer.scaling, meta.max_output_len, config=self._extend_config(layer), uniform_tiles=self.deterministic,
        )

    def forward_decode(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch, rotary=None) -> torch.Tensor:
        splits = self._decode_splits(batch.batch_size, layer.num_kv_heads, q.device)
        new_kv = None
        if rotary is not None and splits > 1 and self._decode_rope_checked and not self.deterministic:
            # Small batches, where each launch shows: RoPE and the KV write happen in the attention
            # kernel itself (decode.py), one launch a layer less. One-split batches are bandwidth-
            # bound and keep rotary_store_kv.
            assert self.metadata is not None, "prepare(batch) must run before the first layer"
            new_kv = NewKV(k, v, *rotary, batch.out_cache_loc)
            k_buffer, v_buffer = batch.kv_pool.k_buffers[layer.layer_id], batch.kv_pool.v_buffers[layer.layer_id]
        else:
            k_buffer, v_buffer = self._store(q, k, v, layer, batch, rotary)
        table = batch.req_to_token
        by_length = DETERMINISTIC_SPLITS if self.deterministic else None  # always through the merge: see LengthSplits
        merged = splits > 1 or by_length is not None
        arrivals = self._merge_counters(batch.batch_size, layer.num_kv_heads, q.device) if merged else None
        return decode_attention_table(
            q, k_buffer, v_buffer, table, batch.req_pool_indices, table.stride(0), batch.seq_lens, layer.scaling,
            splits, config=self.decode_config, new_kv=new_kv, arrivals=arrivals,
            length_splits=by_length,
        )

    def _merge_counters(self, batch_size: int, num_kv_heads: int, device: torch.device) -> torch.Tensor | None:
        """The arrival counters for a split step of `batch_size` requests (None: the merge kernel
        runs). Every layer's launch shares them: each leaves them zero, and launches are in stream
        order. They grow only outside graph capture, and an outgrown buffer is kept, since a
        captured graph still reads it."""
        if not self.merge_in_split:
            return None
        if device.type == "cuda" and device.index is None:  # one key per GPU: "cuda" and "cuda:0" alike
            device = torch.device("cuda", torch.cuda.current_device())
        needed = batch_size * num_kv_heads
        counters = self._arrivals.get(device)
        if counters is None or counters.numel() < needed:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            if counters is not None:
                self._outgrown.append(counters)
            batches = max(batch_size, 2 * counters.numel() // num_kv_heads if counters is not None else 0)
            counters = self._arrivals[device] = merge_workspace(batches, num_kv_heads, device)
        return counters

    def can_fuse_rotary(self, q: torch.Tensor) -> bool:
        return self._rotary_checked and can_rotate_and_store(q)

    def _store(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch, rotary) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's K/V into the pool (rotating q in place and k on its way, given `rotary`)."""
        assert self.metadata is not None, "prepare(batch) must run before the first layer"
        k_buffer = batch.kv_pool.k_buffers[layer.layer_id]
        v_buffer = batch.kv_pool.v_buffers[layer.layer_id]
        if rotary is None:
            store_kv(k_buffer, v_buffer, batch.out_cache_loc, k, v)
        else:
            rotary_store_kv(k_buffer, v_buffer, batch.out_cache_loc, q, k, v, *rotary)
        return k_buffer, v_buffer

    def _decode_splits(self, batch_size: int, num_kv_heads: int, device: torch.device) -> int:
        if self.deterministic:  # each request split by its own length: its sums never follow the batch
            return DETERMINISTIC_SPLITS.launch_splits(self.metadata.max_seq_len)
        if self.num_splits is not None:
            return self.num_splits
        if self._step_splits is not None:
            return self._step_splits
        return choose_num_splits(batch_size, num_kv_heads, self.metadata.max_seq_len, sm_count(device))


def decode_rope_agrees(layer: AttentionLayer, q_dtype: torch.dtype, kv_dtype: torch.dtype, device: torch.device,
                       config: DecodeConfig) -> bool:
    """A start-up check of RoPE inside decode attention (NewKV) against rotary_store_kv then decode,
    on this device, for a few requests whose newest key falls in a first tile and in a later one.
    Both round the same float32 formulas (an sm_90 compile gave both the same FMAs), so the pools
    and the outputs must be the same bytes: a stale key or a rotation compiled otherwise fails."""
    gen = torch.Generator(device=device).manual_seed(0)
    heads, kv_heads, dim = layer.num_heads, layer.num_kv_heads, layer.head_dim
    seq_lens = [1, config.block_n + 3, 3 * config.block_n + 1]
    slots = sum(seq_lens) + 1
    pools = [torch.randn(slots, kv_heads, dim, device=device, generator=gen).to(kv_dtype) for _ in range(2)]
    table = torch.arange(1, slots, device=device, dtype=torch.int32)
    starts = [0, seq_lens[0], seq_lens[0] + seq_lens[1]]
    rows = torch.tensor(starts, device=device)
    lengths = torch.tensor(seq_lens, device=device, dtype=torch.int32)
    loc = (rows + lengths - 1 + 1).to(torch.int64)  # each request's newest slot (table[i] = i + 1)
    batch = len(seq_lens)
    q = torch.randn(batch, heads, dim, device=device, generator=gen).to(q_dtype)
    k, v = (torch.randn(batch, kv_heads, dim, device=device, generator=gen).to(q_dtype) for _ in range(2))
    angles = torch.rand(batch, dim // 2, device=device, generator=gen) * 6.0
    cos, sin = angles.cos(), angles.sin()
    fused_pools = [p.clone() for p in pools]
    fused = decode_attention_table(q, *fused_pools, table, rows, 1, lengths, layer.scaling, 2, config=config,
                                   new_kv=NewKV(k, v, cos, sin, loc))
    rotated = q.clone()
    rotary_store_kv(pools[0], pools[1], loc, rotated, k, v, cos, sin)
    plain = decode_attention_table(rotated, *pools, table, rows, 1, lengths, layer.scaling, 2, config=config)
    same_pools = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(fused_pools, pools))
    return same_pools and torch.equal(fused, plain)
