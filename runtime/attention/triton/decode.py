"""Split-KV ("flash-decoding") decode attention with grouped-query heads over the paged KV pool.

Stage 1, grid (batch, kv_head, split): one program takes every query head of one KV-head group (so a
K/V tile is loaded once per group, and the group is padded to >= 16 rows for tl.dot), walks its
slice of the request's KV slots, and writes a partial result: the softmax-weighted V and the
log-sum-exp of its scores, in float32.

A request's slots are read from a slot table: request b's i-th token is at
table[row[b] * row_stride + i] and it has seq_lens[b] tokens. The engine passes its req→token table
(row = the request's pool row), so a decode step builds no index list at all, on the host or the
GPU, and a CUDA graph reads the live table. `decode_attention` also takes the flat kv_indptr /
kv_indices form (row = kv_indptr, row_stride = 1).
Stage 2, grid (batch, kv_head): merges the splits of a group's query heads with their log-sum-exps.
With one split (large batches) stage 1 writes the final output itself and stage 2 does not run.
Given a workspace of arrival counters, stage 2 does not launch either: the last split of each
(request, KV head) to finish counts the others in and merges them (the "last block" reduction).

Slices of one request (seq_len tokens, num_splits programs, tiles of BLOCK_N):

    | split 0: split_len | split 1: split_len | ... | last: the rest | empty splits (lse = -inf) |
    split_len = ceil(ceil(seq_len / num_splits) / BLOCK_N) * BLOCK_N

Scores are kept in log2 units (scaled by log2(e)) so the kernels use exp2/log2.

Small batches (several splits) are latency-bound, so stage 1 does two more things there: it loads its
first KV tile before the PDL wait (keys of earlier steps only), and, given `NewKV`, it applies RoPE to
q and to the step's new key itself and writes the new K/V into the pool, which saves the launch of
rotary_store_kv (kv_store.py) in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.attention.triton.splits import LengthSplits
from runtime.attention.triton.tile import attend_loaded_tile, attend_tile
from runtime.pdl import enter_small_kernel, gdc_launch_dependents, gdc_wait
from runtime.triton_interpreter import exact_bf16, exact_rounding, fp8_format, round_to_bf16, round_to_fp8

LOG2_E = 1.4426950408889634
MIN_DOT_ROWS = 16  # tl.dot needs at least 16 rows on the tensor cores
MERGE_TILE = 8192  # float32 values of partial outputs stage 2 holds at once (64 a thread at 4 warps)


@dataclass(frozen=True)
class DecodeConfig:
    """Launch shape of stage 1 (the benchmark sweeps these)."""

    block_n: int = 64  # KV tokens per tile
    num_warps: int = 4
    num_stages: int = 2  # software-pipelining depth of the KV loop (ignored by the interpreter)


# The batch's row and length tensors can be views at any offset (e.g. req_pool_indices packed behind
# the positions, B int64s in), so their pointers must not be specialised on 16-byte alignment: that
# would compile a second variant, mid-run, the first time an eager batch of odd size comes. The same
# for the pointers that get `rows` as a placeholder when unused (loc_ptr, arrivals_ptr).
@triton.jit
def _rotate_half(x_ptrs, partner_ptrs, mask, cos, sin, first_half, QK_EXACT: tl.constexpr):
    """RoPE (rotate-half) of the rows at x_ptrs, each element paired with the one at partner_ptrs
    (half a head away), in float32 rounded to the rows' dtype: the rotary kernels' arithmetic
    (kv_store.py), so the bits are theirs."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    yf = tl.load(partner_ptrs, mask=mask, other=0.0).to(tl.float32)
    # first half: x cos - y sin; second half: x cos + y sin (y = the first-half partner)
    rotated = tl.where(first_half, xf * cos - yf * sin, xf * cos + yf * sin)
    return round_to_bf16(rotated, QK_EXACT).to(x.dtype)


@triton.jit(do_not_specialize_on_alignment=["row_ptr", "seq_lens_ptr", "loc_ptr", "arrivals_ptr"])
def _decode_split_kernel(
    q_ptr, k_buffer_ptr, v_buffer_ptr, table_ptr, row_ptr, row_stride, seq_lens_ptr, mid_o_ptr, mid_lse_ptr,
    scale_log2,
    stride_q_b, stride_q_h, stride_buffer_s, stride_buffer_h,
    stride_mid_b, stride_mid_h, stride_lse_b, stride_lse_h, o_ptr, stride_o_b, stride_o_h,
    k_new_ptr, v_new_ptr, cos_ptr, sin_ptr, loc_ptr, stride_kn_b, stride_kn_h, stride_vn_b, stride_vn_h, stride_cs,
    arrivals_ptr,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, PDL: tl.constexpr, SINGLE_SPLIT: tl.constexpr,
    KV_VIA_F32: tl.constexpr, ROPE: tl.constexpr, QK_EXACT: tl.constexpr, EXACT: tl.constexpr,
    MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr, MERGE_HERE: tl.constexpr, BLOCK_G: tl.constexpr,
    CHUNK_S: tl.constexpr, OWN_MIN_LEN: tl.constexpr, OWN_MAX: tl.constexpr,
):
    if PDL:  # a small kernel: the next one may launch now (runtime/pdl.py)
        gdc_launch_dependents()
    batch = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    # Read before the PDL wait: the rows, lengths and slot table are written before the forward
    # pass (host copies, the CUDA-graph staging kernel or the torch scatter: none launched with PDL,
    # so each finishes before any later kernel starts), never by one of its kernels.
    kv_start = tl.load(row_ptr + batch).to(tl.int64) * row_stride
    seq_len = tl.load(seq_lens_ptr + batch).to(tl.int32)
    own = _own_splits(seq_len, num_splits, OWN_MIN_LEN, OWN_MAX)
    # whole tiles per split: only a request's last tile is partly masked
    split_len = tl.cdiv(tl.cdiv(seq_len, own), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_h
    mask_h = offs_h < GROUP
    mask_d = offs_d < HEAD_DIM
    kv_head_offset = kv_head * stride_buffer_h
    if not SINGLE_SPLIT:
        # Small batches (several splits) are latency-bound: the first tile's keys and values load
        # while the kernels before us still run. Only keys of earlier steps may: this step's key, at
        # seq_len - 1, is written in this layer (by rotary_store_kv before us, or below with NewKV),
        # so it comes after the wait. Through L2 (.cg): nothing rests on L1 being fresh.
        n_first = lo + offs_n
        first_in = n_first < hi
        first_old = (n_first < seq_len - 1) & first_in
        first_slots = tl.load(table_ptr + kv_start + n_first, mask=first_in, other=0).to(tl.int64)
        first_offsets = first_slots[:, None] * stride_buffer_s + kv_head_offset + offs_d[None, :]
        old_mask = first_old[:, None] & mask_d[None, :]
        k_first = tl.load(k_buffer_ptr + first_offsets, mask=old_mask, other=0.0, cache_modifier=".cg")
        v_first = tl.load(v_buffer_ptr + first_offsets, mask=old_mask, other=0.0, cache_modifier=".cg")
    if PDL:
        gdc_wait()
    # q: [BLOCK_H, BLOCK_D], the group's query heads (padding rows are zero)
    q_rows = q_ptr + batch * stride_q_b + heads[:, None] * stride_q_h
    q_mask = mask_h[:, None] & mask_d[None, :]
    if ROPE:
        # RoPE here rather than in a kernel of its own: q and this step's k arrive unrotated. Every
        # program rotates its group's q; the split that holds the newest key rotates it and writes
        # it and v into the pool, as rotary_store_kv does, before any tile of it is read.
        half = HEAD_DIM // 2
        partner = (offs_d + half) % HEAD_DIM
        first_half = offs_d < half
        cos = tl.load(cos_ptr + batch * stride_cs + offs_d % half, mask=mask_d, other=0.0)
        sin = tl.load(sin_ptr + batch * stride_cs + offs_d % half, mask=mask_d, other=0.0)
        q = _rotate_half(q_rows + offs_d[None, :], q_rows + partner[None, :], q_mask, cos[None, :], sin[None, :],
                         first_half[None, :], QK_EXACT)
        new_pos = seq_len - 1
        k_new = tl.zeros([BLOCK_D], dtype=k_buffer_ptr.dtype.element_ty)
        v_new = tl.zeros([BLOCK_D], dtype=k_buffer_ptr.dtype.element_ty)
        if (lo <= new_pos) & (new_pos < hi):
            k_row = k_new_ptr + batch * stride_kn_b + kv_head * stride_kn_h
            k_rot = _rotate_half(k_row + offs_d, k_row + partner, mask_d, cos, sin, first_half, QK_EXACT)
            # stored as store_kv stores: via float32 (and the fp8 rounding the interpreter needs)
            k_new = round_to_fp8(k_rot.to(tl.float32), EXACT, MANT_BITS, MIN_EXP).to(k_buffer_ptr.dtype.element_ty)
            v_in = tl.load(v_new_ptr + batch * stride_vn_b + kv_head * stride_vn_h + offs_d, mask=mask_d, other=0.0)
            v_new = round_to_fp8(v_in.to(tl.float32), EXACT, MANT_BITS, MIN_EXP).to(v_buffer_ptr.dtype.element_ty)
            new_at = tl.load(loc_ptr + batch).to(tl.int64) * stride_buffer_s + kv_head_offset + offs_d
            tl.store(k_buffer_ptr + new_at, k_new, mask=mask_d)
            tl.store(v_buffer_ptr + new_at, v_new, mask=mask_d)
        tl.debug_barrier()  # the loop below may read that key back from the pool, in other threads
    else:
        q = tl.load(q_rows + offs_d[None, :], mask=q_mask, other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    loop_lo = lo
    if not SINGLE_SPLIT:
        first_new = (n_first == seq_len - 1) & first_in
        new_mask = first_new[:, None] & mask_d[None, :]
        if ROPE:  # the newest key from registers
            k_first = tl.where(new_mask, k_new[None, :], k_first)
            v_first = tl.where(new_mask, v_new[None, :], v_first)
        else:
            k_first = tl.where(new_mask, tl.load(k_buffer_ptr + first_offsets, mask=new_mask, other=0.0), k_first)
            v_first = tl.where(new_mask, tl.load(v_buffer_ptr + first_offsets, mask=new_mask, other=0.0), v_first)
        if lo < hi:
            acc, m_i, l_i = attend_loaded_tile(acc, m_i, l_i, q, k_first, v_first, first_in, scale_log2,
                                               DOT_PRECISION, KV_VIA_F32)
        loop_lo = lo + BLOCK_N
    for start in range(loop_lo, hi, BLOCK_N):  # (offs_h stands in for last_visible: decode is not causal)
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, start, hi, offs_h, k_buffer_ptr, v_buffer_ptr, table_ptr + kv_start, kv_head_offset,
            stride_buffer_s, offs_n, offs_d, mask_d, scale_log2, DOT_PRECISION, KV_VIA_F32, BOUNDED=True, CAUSAL=False)

    # An empty split (lo >= hi) leaves l_i == 0 and m_i == -inf: it stores o = 0, lse = -inf.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    if SINGLE_SPLIT:  # the whole sequence in one program: its result is final, no merge pass
        o_rows = batch * stride_o_b + heads * stride_o_h
        tl.store(o_ptr + o_rows[:, None] + offs_d[None, :], (acc / l_safe[:, None]).to(o_ptr.dtype.element_ty),
                 mask=mask_h[:, None] & mask_d[None, :])
        return
    lse = m_i + tl.log2(l_safe)
    # mid_o: [B, H, num_splits, BLOCK_D]; mid_lse: [B, H, num_splits]
    mid_row = batch * stride_mid_b + heads * stride_mid_h + split * BLOCK_D
    # a split past the request's own count is empty, and the merge skips it (a vector: the
    # interpreter takes no scalar in a store mask)
    stored = mask_h & (split + 0 * offs_h < own)
    tl.store(mid_o_ptr + mid_row[:, None] + offs_d[None, :], acc / l_safe[:, None], mask=stored[:, None])
    tl.store(mid_lse_ptr + batch * stride_lse_b + heads * stride_lse_h + split, lse, mask=stored)
    if MERGE_HERE:
        # The last split of this (request, KV head) to finish merges them all, so no merge kernel
        # launches. Every thread's stores come before the count (the barrier), the count releases
        # them to the GPU and acquires the other splits', and the merge reads through L2.
        tl.debug_barrier()
        counter = arrivals_ptr + batch * tl.num_programs(1) + kv_head
        if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == num_splits - 1:
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # zero again for the next launch
            _merge_splits(mid_o_ptr, mid_lse_ptr, o_ptr, batch, kv_head, own, stride_mid_b, stride_mid_h,
                          stride_lse_b, stride_lse_h, stride_o_b, stride_o_h, GROUP, HEAD_DIM, BLOCK_G, BLOCK_D, CHUNK_S)


@triton.jit
def _own_splits(seq_len, num_splits, OWN_MIN_LEN: tl.constexpr, OWN_MAX: tl.constexpr):
    """The splits a request's KV is cut into: all of the launch's, or (OWN_MIN_LEN > 0, deterministic
    inference) a count from its own length only, min(OWN_MAX, ceil(seq_len / OWN_MIN_LEN)), so its
    sums do not depend on what else is in the batch. The launch has at least that many."""
    if OWN_MIN_LEN > 0:
        return tl.minimum(tl.maximum(tl.cdiv(seq_len, OWN_MIN_LEN), 1), OWN_MAX)
    return num_splits


@triton.jit
def _merge_splits(
    mid_o_ptr, mid_lse_ptr, o_ptr, batch, kv_head, num_splits,
    stride_mid_b, stride_mid_h, stride_lse_b, stride_lse_h, stride_o_b, stride_o_h,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK_S: tl.constexpr,
):
    """Stage 2 for the query heads of one KV group: the splits' outputs weighted by their
    log-sum-exps, CHUNK_S splits at a time with a running maximum. Both the merge kernel and a split
    kernel that merges in place call this, so the two give the same bits."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_c = tl.arange(0, CHUNK_S)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + offs_g
    mask_g = offs_g < GROUP
    lse_rows = mid_lse_ptr + batch * stride_lse_b + heads * stride_lse_h
    o_rows = mid_o_ptr + batch * stride_mid_b + heads * stride_mid_h
    m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    total = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for s0 in range(0, num_splits, CHUNK_S):
        splits = s0 + offs_c
        in_range = mask_g[:, None] & (splits < num_splits)[None, :]
        # Both loads at once: an empty split stored zeros (and lse = -inf), so the parts need no lse
        # mask. Through L2 (.cg): other programs wrote them during this kernel.
        lse = tl.load(lse_rows[:, None] + splits[None, :], mask=in_range, other=float("-inf"), cache_modifier=".cg")
        parts = tl.load(o_rows[:, None, None] + splits[None, :, None] * BLOCK_D + offs_d[None, None, :],
                        mask=in_range[:, :, None] & (offs_d < BLOCK_D)[None, None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(lse, 1))
        m_ref = tl.where(m_new > float("-inf"), m_new, 0.0)  # every split so far empty: weights 0
        rescale = tl.exp2(m - m_ref)
        weights = tl.where(lse > float("-inf"), tl.exp2(lse - m_ref[:, None]), 0.0)
        total = total * rescale + tl.sum(weights, 1)
        acc = acc * rescale[:, None] + tl.sum(parts * weights[:, :, None], 1)
        m = m_new
    out = acc / tl.maximum(total, 1e-30)[:, None]
    tl.store(o_ptr + batch * stride_o_b + heads[:, None] * stride_o_h + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=mask_g[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit(do_not_specialize_on_alignment=["seq_lens_ptr"])
def _decode_merge_kernel(
    mid_o_ptr, mid_lse_ptr, o_ptr, num_splits, seq_lens_ptr,
    stride_mid_b, stride_mid_h, stride_lse_b, stride_lse_h, stride_o_b, stride_o_h,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    CHUNK_S: tl.constexpr, PDL: tl.constexpr, OWN_MIN_LEN: tl.constexpr, OWN_MAX: tl.constexpr,
):
    enter_small_kernel(PDL)  # see runtime/pdl.py
    own = num_splits
    if OWN_MIN_LEN > 0:  # (the lengths are read only then: they were written before the forward pass)
        own = _own_splits(tl.load(seq_lens_ptr + tl.program_id(0)).to(tl.int32), num_splits, OWN_MIN_LEN, OWN_MAX)
    _merge_splits(mid_o_ptr, mid_lse_ptr, o_ptr, tl.program_id(0), tl.program_id(1), own,
                  stride_mid_b, stride_mid_h, stride_lse_b, stride_lse_h, stride_o_b, stride_o_h,
                  GROUP, HEAD_DIM, BLOCK_G, BLOCK_D, CHUNK_S)


def dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs get exact products (tests compare at 1e-4); half types use the tensor cores.
    return "ieee" if dtype == torch.float32 else "tf32"


def decode_attention(
    q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor, kv_indices: torch.Tensor, scaling: float, num_splits: int,
    out: torch.Tensor | None = None, config: DecodeConfig = DecodeConfig(),
) -> torch.Tensor:
    """Attention of one new token per request over its whole KV.

    q: [B, H, D]; k_buffer, v_buffer: [num_slots, KvH, D] (same strides); kv_indptr: [B+1] int32;
    kv_indices: [kv_indptr[-1]] int32 slots, request after request → out [B, H, D] in q's dtype.
    H must be a multiple of KvH; num_splits >= 1 slices each request's KV (see module docstring).
    """
    seq_lens = kv_indptr[1:] - kv_indptr[:-1]
    return decode_attention_table(
        q, k_buffer, v_buffer, kv_indices, kv_indptr, 1, seq_lens, scaling, num_splits, out, config
    )


@dataclass(frozen=True)
class NewKV:
    """A decode step's own K and V, not yet in the pool and not yet rotated: `decode_attention_table`
    rotates q and k by RoPE (rotate-half, like rotary_store_kv) and writes k and v at `loc`.
    k, v: [B, KvH, D] (views with unit inner stride); cos, sin: [B, D/2] float32; loc: [B] slots."""

    k: torch.Tensor
    v: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    loc: torch.Tensor


def decode_attention_table(
    q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
    table: torch.Tensor, rows: torch.Tensor, row_stride: int, seq_lens: torch.Tensor,
    scaling: float, num_splits: int, out: torch.Tensor | None = None, config: DecodeConfig = DecodeConfig(),
    new_kv: NewKV | None = None, arrivals: torch.Tensor | None = None, length_splits: LengthSplits | None = None,
) -> torch.Tensor:
    """`decode_attention` with request b's slots at table[rows[b] * row_stride + i], i < seq_lens[b]
    (e.g. table = req_to_token flattened, rows = req_pool_indices, row_stride = its row length).
    With `new_kv`, q is unrotated and each request's newest key (at seq_lens[b] - 1) is new_kv's:
    the kernel rotates and stores it (see NewKV), saving the launch of rotary_store_kv.
    With `arrivals`, int32 zeros of at least B × KvH (see `merge_workspace`), the last split of each
    (request, KV head) merges the splits itself, saving the merge kernel's launch; the kernel leaves
    the counters zero again. One launch at a time may use a workspace. With `length_splits`, each
    request is cut by its own length (LengthSplits); num_splits must be at least its
    launch_splits(longest request)."""
    batch_size, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert num_heads % num_kv_heads == 0 and q.stride(-1) == 1 and k_buffer.stride() == v_buffer.stride()
    assert table.is_contiguous()
    if new_kv is not None:
        assert head_dim & (head_dim - 1) == 0, "RoPE in decode takes power-of-two heads"
        assert new_kv.k.stride(-1) == new_kv.v.stride(-1) == 1 and new_kv.cos.stride(-1) == 1
        assert new_kv.cos.shape == new_kv.sin.shape == (batch_size, head_dim // 2)
        assert new_kv.cos.stride(0) == new_kv.sin.stride(0) and new_kv.loc.shape == (batch_size,)
    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    out = torch.empty_like(q) if out is None else out
    if batch_size == 0:
        return out
    single_split = num_splits == 1 and length_splits is None
    # partial results of stage 1, rows padded to BLOCK_D (one split writes `out` directly)
    mid_shape = (batch_size, num_heads, num_splits, block_d) if not single_split else (1, 1, 1, block_d)
    mid_o = torch.empty(mid_shape, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(mid_shape[:3], dtype=torch.float32, device=q.device)
    mid_strides = (mid_o.stride(0), mid_o.stride(1), mid_lse.stride(0), mid_lse.stride(1))
    launch_pdl = pdl.launch_args(q.device)
    if new_kv is None:  # placeholders the kernel never reads (ROPE=False)
        new_args = (q, q, q, q, rows, 0, 0, 0, 0, 0)
    else:
        k_new, v_new = new_kv.k, new_kv.v
        new_args = (k_new, v_new, new_kv.cos, new_kv.sin, new_kv.loc, k_new.stride(0), k_new.stride(1),
                    v_new.stride(0), v_new.stride(1), new_kv.cos.stride(0))
    merge_here = not single_split and arrivals is not None
    if merge_here:
        assert arrivals.dtype == torch.int32 and arrivals.is_contiguous()
        assert arrivals.numel() >= batch_size * num_kv_heads, "the merge workspace is smaller than B x KvH"
    block_g = triton.next_power_of_2(group)
    # splits merged per step of stage 2: a [group, chunk, BLOCK_D] float32 tile of at most 8k values
    # (by length: a constant, so a request's splits are summed in the same groups in any launch)
    most_splits = num_splits if length_splits is None else length_splits.max_splits
    chunk_s = max(1, min(triton.next_power_of_2(most_splits), MERGE_TILE // (block_g * block_d)))
    own_args = dict(OWN_MIN_LEN=0, OWN_MAX=0) if length_splits is None else dict(
        OWN_MIN_LEN=length_splits.min_len, OWN_MAX=length_splits.max_splits)
    _decode_split_kernel[(batch_size, num_kv_heads, num_splits)](
        q, k_buffer, v_buffer, table, rows, row_stride, seq_lens, mid_o, mid_lse,
        scaling * LOG2_E,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1),
        *mid_strides, out, out.stride(0), out.stride(1), *new_args, arrivals if merge_here else rows,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_H=max(MIN_DOT_ROWS, block_g),
        BLOCK_D=block_d, BLOCK_N=config.block_n, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages, SINGLE_SPLIT=single_split,
        KV_VIA_F32=k_buffer.dtype != q.dtype, ROPE=new_kv is not None, QK_EXACT=exact_bf16(q.dtype),
        EXACT=exact_rounding(k_buffer.dtype), **fp8_format(k_buffer.dtype), MERGE_HERE=merge_here,
        BLOCK_G=block_g, CHUNK_S=chunk_s, **own_args, **launch_pdl,
    )
    if single_split or merge_here:
        return out
    _decode_merge_kernel[(batch_size, num_kv_heads)](
        mid_o, mid_lse, out, num_splits, seq_lens,
        *mid_strides, out.stride(0), out.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_G=block_g, BLOCK_D=block_d, CHUNK_S=chunk_s, **own_args,
        num_warps=config.num_warps, **launch_pdl,  # the split kernel's warps: the same layout, the same sums
    )
    return out


def merge_workspace(max_batch: int, num_kv_heads: int, device: torch.device) -> torch.Tensor:
    """The `arrivals` counters of decode_attention_table for batches up to `max_batch`."""
    return torch.zeros(max_batch * num_kv_heads, dtype=torch.int32, device=device)
