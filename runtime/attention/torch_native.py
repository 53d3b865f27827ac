"""Reference attention in plain torch: per request, gather K/V through the req→token table and run
SDPA. Slow but obviously right; the CPU default and the oracle for the Triton/FlashInfer kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.attention.base import AttentionLayer, BaseAttentionBackend, register_attention_backend
from runtime.forward_batch import ForwardBatch


@register_attention_backend("torch_native")
class TorchNativeAttention(BaseAttentionBackend):
    def __init__(self, **_unused):
        self._rows: list[tuple[int, int, int, int]] = []  # (row, prefix_len, extend_len, q_start)
        self._decode_slots: torch.Tensor | None = None  # [B, max_len] slots, padded with slot 0
        self._decode_mask: torch.Tensor | None = None  # [B, 1, 1, max_len] True where a key is real

    def prepare(self, batch: ForwardBatch) -> None:
        rows = batch.req_pool_indices.tolist()
        seq_lens = batch.seq_lens_cpu.tolist()
        if batch.is_decode:
            # decode is batched into one padded SDPA call: per-request calls cost more than padding
            max_len = max(seq_lens)
            table = batch.req_to_token[batch.req_pool_indices, :max_len].to(torch.int64)
            valid = torch.arange(max_len, device=table.device).unsqueeze(0) < batch.seq_lens.unsqueeze(1)
            self._decode_slots = torch.where(valid, table, torch.zeros_like(table))
            self._decode_mask = valid[:, None, None, :]
            return
        prefix = batch.extend_prefix_lens_cpu.tolist()
        extend = batch.extend_seq_lens_cpu.tolist()
        starts, offset = [], 0
        for n in extend:
            starts.append(offset)
            offset += n
        self._rows = list(zip(rows, prefix, extend, starts))

    def forward_extend(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        batch.kv_pool.set_kv(layer.layer_id, batch.out_cache_loc, k, v)
        return self._attend(q, layer, batch)

    def forward_decode(self, q, k, v, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        batch.kv_pool.set_kv(layer.layer_id, batch.out_cache_loc, k, v)
        bsz, group = q.shape[0], layer.num_heads // layer.num_kv_heads
        # GQA without copies: the query heads of one KV head form the "query length" axis.
        # q: [B, H, D] → [B, KvH, group, D]; keys/values: [B, max_len, KvH, D] → [B, KvH, max_len, D]
        keys = batch.kv_pool.k_buffers[layer.layer_id][self._decode_slots].to(q.dtype).transpose(1, 2)
        values = batch.kv_pool.v_buffers[layer.layer_id][self._decode_slots].to(q.dtype).transpose(1, 2)
        qg = q.view(bsz, layer.num_kv_heads, group, layer.head_dim)
        out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=self._decode_mask, scale=layer.scaling)
        return out.reshape(bsz, layer.num_heads, layer.head_dim)

    def _attend(self, q: torch.Tensor, layer: AttentionLayer, batch: ForwardBatch) -> torch.Tensor:
        k_buffer = batch.kv_pool.k_buffers[layer.layer_id]
        v_buffer = batch.kv_pool.v_buffers[layer.layer_id]
        out = torch.empty_like(q)
        group = layer.num_heads // layer.num_kv_heads
        for row, prefix_len, extend_len, q_start in self._rows:
            seq_len = prefix_len + extend_len
            slots = batch.req_to_token[row, :seq_len].to(torch.int64)
            # [H, n, D] views for SDPA; K/V repeated over the query-head groups (GQA)
            qi = q[q_start : q_start + extend_len].transpose(0, 1)
            ki = k_buffer[slots].to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)
            vi = v_buffer[slots].to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)
            # bottom-right aligned causal mask: new token j sees keys [0, prefix_len + j]
            mask = torch.ones(extend_len, seq_len, dtype=torch.bool, device=q.device).tril(prefix_len)
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=layer.scaling)
            out[q_start : q_start + extend_len] = oi.transpose(0, 1)
        return out
