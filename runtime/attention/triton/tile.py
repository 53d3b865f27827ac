"""One tile of keys folded into a running (online) softmax: the inner loop both attention kernels share.

Rows of `q` are queries (extend: new tokens of one head; decode: the query heads of one KV group).
Scores are in log2 units. The caller keeps (acc, m_i, l_i) across tiles and divides acc by l_i at
the end.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_tile(
    acc, m_i, l_i, q, start, hi, last_visible, k_buffer_ptr, v_buffer_ptr, slots_ptr,
    kv_head_offset, stride_buffer_s, offs_n, offs_d, mask_d, scale_log2,
    DOT_PRECISION: tl.constexpr, KV_VIA_F32: tl.constexpr, BOUNDED: tl.constexpr, CAUSAL: tl.constexpr,
):
    """Keys start .. start + BLOCK_N, their slots at slots_ptr[key]. BOUNDED masks keys >= hi; CAUSAL
    hides key n from row r when n > last_visible[r]. A tile that needs neither (every key below hi
    and visible to every row) skips both."""
    tl.static_assert(BOUNDED or not CAUSAL, "the causal mask is built on the bounds mask")
    n = start + offs_n
    if BOUNDED:
        mask_n = n < hi
        slots = tl.load(slots_ptr + n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
    else:
        slots = tl.load(slots_ptr + n).to(tl.int64)
        kv_mask = mask_d[None, :]
    kv_offsets = slots[:, None] * stride_buffer_s + kv_head_offset + offs_d[None, :]
    # k, v: [BLOCK_N, BLOCK_D] gathered through the slots
    k = tl.load(k_buffer_ptr + kv_offsets, mask=kv_mask, other=0.0)
    if KV_VIA_F32:  # an fp8 pool: widen exactly to float32 first (Triton's interpreter
        k = k.to(tl.float32)  # converts fp8 straight to bf16 wrongly; on the GPU it costs nothing)
    k = k.to(q.dtype)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if CAUSAL:
        scores = tl.where(mask_n[None, :] & (n[None, :] <= last_visible[:, None]), scores, float("-inf"))
    elif BOUNDED:
        scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_buffer_ptr + kv_offsets, mask=kv_mask, other=0.0)
    if KV_VIA_F32:
        v = v.to(tl.float32)
    v = v.to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_loaded_tile(acc, m_i, l_i, q, k, v, mask_n, scale_log2, DOT_PRECISION: tl.constexpr, KV_VIA_F32: tl.constexpr):
    """attend_tile (BOUNDED, not CAUSAL) for keys whose K and V the caller has already loaded, in the
    pool's dtype (decode loads a tile before its PDL wait: decode.py); keys outside mask_n are hidden."""
    if KV_VIA_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * scale_log2
    scores = tl.where(mask_n[None, :], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
    return acc, m_new, l_i
