"""Extend (prefill) attention over the paged KV pool, after the step's K/V has been stored.

Once kv_store has written the new tokens, all of a request's KV [0, seq_len) is in the pool, so one
kernel reads it through kv_indptr / kv_indices and applies a causal mask shifted by the prefix:

    keys:    | cached prefix (prefix_len) | new tokens (extend_len) |
    query i (0 <= i < extend_len) sees keys [0, prefix_len + i]

Grid (request, KV head, block) with `pack_gqa` (the default): one program takes the whole query-head
group, so a K/V tile is loaded once for the group. Without it, (request, head, block of BLOCK_M new
tokens). Blocks past a request's extend_len exit at once.
The KV loop stops at the last key the block's final query can see, and scores use exp2 (log2 units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime.attention.triton.decode import LOG2_E, dot_precision
from runtime.attention.triton.tile import attend_tile


@dataclass(frozen=True)
class ExtendConfig:
    """Launch shape of the extend kernel. The default is the fastest shape measured on an H200
    (benchmarks/bench_extend.py: bf16, GQA 32/8, head dim 128) in each of three batches: prompts of
    256-1,024 new tokens (172 TFLOP/s; 168 for 64 one-head rows in 2 stages), an 8k chunk after 8k
    cached tokens (391; 393 for 128 one-head rows), and 64 requests of 64 new tokens after 2,000
    cached (275; 220 for 64 one-head rows, FlashInfer 212)."""

    block_m: int = 128  # query rows per program: new tokens (with pack_gqa, tokens x the padded group)
    block_n: int = 64  # KV tokens per tile
    num_warps: int = 4
    num_stages: int = 3
    # one program takes every query head of a KV group, so each K/V tile is loaded once per group
    # instead of once per head
    pack_gqa: bool = True


# Heads wider than 128: a 128-row float32 accumulator of 256 columns is 256 registers a thread at 4
# warps, and an sm_90 compile of the default spilled ~4 KB a thread (64 one-head rows: 32 bytes). They
# keep the earlier default shape until a GPU run measures them.
WIDE_HEAD_EXTEND_CONFIG = ExtendConfig(block_m=64, block_n=64, num_warps=4, num_stages=2, pack_gqa=False)


def default_extend_config(head_dim: int) -> ExtendConfig:
    """The launch shape for a model's head size when none is forced."""
    return ExtendConfig() if head_dim <= 128 else WIDE_HEAD_EXTEND_CONFIG


@triton.jit
def _extend_kernel(
    q_ptr, o_ptr, k_buffer_ptr, v_buffer_ptr, qo_indptr_ptr, kv_indptr_ptr, kv_indices_ptr,
    scale_log2,
    stride_q_t, stride_q_h, stride_o_t, stride_o_h, stride_buffer_s, stride_buffer_h,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, KV_VIA_F32: tl.constexpr,
    HEADS_PER_PROGRAM: tl.constexpr, HEAD_STEP: tl.constexpr, UNIFORM_TILES: tl.constexpr,
):
    # Rows of a program: BLOCK_M new tokens x HEADS_PER_PROGRAM query heads (1, or the KV group padded
    # to a power of two), row r = token r // HEADS_PER_PROGRAM, head first_head + r % HEADS_PER_PROGRAM.
    request = tl.program_id(0)
    first_head = tl.program_id(1) * HEAD_STEP  # HEAD_STEP: 1, or GROUP when a program takes a group
    # the last blocks of a request see the most keys: launch them first, so the long programs do not
    # trail at the end of the grid (blocks are the grid's slowest-varying axis)
    block = tl.num_programs(2) - 1 - tl.program_id(2)
    q_start = tl.load(qo_indptr_ptr + request)
    extend_len = tl.load(qo_indptr_ptr + request + 1) - q_start
    if block * BLOCK_M >= extend_len:
        return
    kv_start = tl.load(kv_indptr_ptr + request)
    seq_len = tl.load(kv_indptr_ptr + request + 1) - kv_start
    prefix_len = seq_len - extend_len

    rows = tl.arange(0, BLOCK_M * HEADS_PER_PROGRAM)
    offs_m = block * BLOCK_M + rows // HEADS_PER_PROGRAM  # index among the request's new tokens
    in_group = rows % HEADS_PER_PROGRAM
    heads = first_head + in_group
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = (offs_m < extend_len) & (in_group < GROUP)  # padding: past the extend, past the group
    mask_d = offs_d < HEAD_DIM
    tokens = (q_start + offs_m).to(tl.int64)
    # q: [rows, BLOCK_D]
    q = tl.load(
        q_ptr + tokens[:, None] * stride_q_t + heads[:, None] * stride_q_h + offs_d[None, :],
        mask=mask_m[:, None] & mask_d[None, :], other=0.0,
    )
    m_i = tl.full([BLOCK_M * HEADS_PER_PROGRAM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M * HEADS_PER_PROGRAM], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M * HEADS_PER_PROGRAM, BLOCK_D], dtype=tl.float32)
    kv_head_offset = (first_head // GROUP) * stride_buffer_h
    last_visible = prefix_len + offs_m  # [rows] the last key position each query sees
    hi = tl.minimum(seq_len, prefix_len + (block + 1) * BLOCK_M)
    # keys [0, prefix_len + block * BLOCK_M] are visible to every query of the block: whole tiles of
    # them need no mask; the tiles from there to hi (the causal band, the sequence end) do
    unmasked_end = (prefix_len + block * BLOCK_M + 1) // BLOCK_N * BLOCK_N
    if UNIFORM_TILES:
        # Every tile on the masked path: which path a key tile takes depends on the block a row shares
        # with others (chunking, the cached prefix), and the compiler may fuse the score scaling into
        # the softmax's subtraction on one path and not the other (other bits on a GPU). Deterministic
        # inference keeps a row's sums independent of its neighbours.
        unmasked_end = 0
    slots_ptr = kv_indices_ptr + kv_start
    for start in range(0, unmasked_end, BLOCK_N):
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, start, hi, last_visible, k_buffer_ptr, v_buffer_ptr, slots_ptr, kv_head_offset,
            stride_buffer_s, offs_n, offs_d, mask_d, scale_log2, DOT_PRECISION, KV_VIA_F32, BOUNDED=False, CAUSAL=False)
    # NOTE: key 0 is visible to every row (padding rows too), so m_i is finite after the first tile.
    for start in range(unmasked_end, hi, BLOCK_N):
        acc, m_i, l_i = attend_tile(
            acc, m_i, l_i, q, start, hi, last_visible, k_buffer_ptr, v_buffer_ptr, slots_ptr, kv_head_offset,
            stride_buffer_s, offs_n, offs_d, mask_d, scale_log2, DOT_PRECISION, KV_VIA_F32, BOUNDED=True, CAUSAL=True)

    out = acc / l_i[:, None]
    tl.store(
        o_ptr + tokens[:, None] * stride_o_t + heads[:, None] * stride_o_h + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :],
    )


def extend_attention(
    q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
    scaling: float, max_extend_len: int, out: torch.Tensor | None = None, config: ExtendConfig = ExtendConfig(),
    uniform_tiles: bool = False,
) -> torch.Tensor:
    """Causal attention of each request's new tokens over its prefix and themselves.

    q: [T, H, D] (request after request, offsets qo_indptr [B+1] int32); the pool already holds the
    new tokens' K/V; kv_indptr [B+1] / kv_indices: each request's slots for positions [0, seq_len);
    max_extend_len: a host-side bound on qo_indptr's gaps (sizes the grid) → out [T, H, D].
    uniform_tiles: every key tile through the masked path (deterministic inference: a row's result
    then has the same bits whatever block, chunk or cached prefix it comes with; a little slower).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert num_heads % num_kv_heads == 0 and q.stride(-1) == 1 and k_buffer.stride() == v_buffer.stride()
    out = torch.empty_like(q) if out is None else out
    batch_size = qo_indptr.shape[0] - 1
    if num_tokens == 0 or batch_size == 0 or max_extend_len == 0:
        return out
    group = num_heads // num_kv_heads
    heads_per_program = triton.next_power_of_2(group) if config.pack_gqa else 1
    # a program's rows (what sizes its registers and shared memory) stay block_m when packed: fewer tokens
    tokens_per_program = max(1, config.block_m // heads_per_program)
    grid = (batch_size, num_kv_heads if config.pack_gqa else num_heads, triton.cdiv(max_extend_len, tokens_per_program))
    _extend_kernel[grid](
        q, out, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices,
        scaling * LOG2_E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_buffer.stride(0), k_buffer.stride(1),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=tokens_per_program, BLOCK_N=config.block_n,
        BLOCK_D=triton.next_power_of_2(head_dim), DOT_PRECISION=dot_precision(q.dtype),
        KV_VIA_F32=k_buffer.dtype != q.dtype, HEADS_PER_PROGRAM=heads_per_program,
        HEAD_STEP=group if config.pack_gqa else 1, UNIFORM_TILES=uniform_tiles, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
