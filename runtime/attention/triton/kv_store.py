"""Write a step's new K/V into the paged KV pool at out_cache_loc, in one launch for K and V; or, with
`rotary_store_kv`, rotate q and k by RoPE on the way in the same launch.

The fused form saves the rotary kernel (one launch a layer in decode, where each costs a few µs of a
~130 µs layer) and a read and write of k (prefill). Its numbers are the rotary kernel's
(runtime/model/fused.py): float32 products rounded to the model dtype, then stored as store_kv
stores (via float32 into an fp8 pool), so a token's K is bit for bit what the two kernels write."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.pdl import enter_small_kernel
from runtime.triton_interpreter import can_launch_on, exact_bf16, exact_rounding, fp8_format, round_to_bf16, round_to_fp8


# `loc` is usually a slice of the pool's free list at whatever offset it had reached: no alignment
# specialisation, or each parity of that offset compiles its own variant (see decode.py).
@triton.jit(do_not_specialize_on_alignment=["loc_ptr"])
def _store_kv_kernel(
    k_ptr, v_ptr, k_buffer_ptr, v_buffer_ptr, loc_ptr,
    stride_k_t, stride_k_h, stride_v_t, stride_v_h, stride_buffer_s, stride_buffer_h,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    PDL: tl.constexpr, EXACT: tl.constexpr, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr,
):
    # One program per token: copies its [num_kv_heads, head_dim] K and V rows to the token's slot.
    enter_small_kernel(PDL)  # see runtime/pdl.py
    token = tl.program_id(0).to(tl.int64)
    # NOTE: slot * stride can pass 2**31 in a large pool, so offsets are int64.
    slot = tl.load(loc_ptr + token).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    dst = slot * stride_buffer_s + heads * stride_buffer_h + dims
    k = tl.load(k_ptr + token * stride_k_t + heads * stride_k_h + dims, mask=mask)
    # via float32 (the interpreter rounds bf16 → fp8 differently from torch), and under the interpreter
    # rounded to the fp8 pool's format first (runtime/triton_interpreter.py)
    k = round_to_fp8(k.to(tl.float32), EXACT, MANT_BITS, MIN_EXP)
    tl.store(k_buffer_ptr + dst, k.to(k_buffer_ptr.dtype.element_ty), mask=mask)
    v = tl.load(v_ptr + token * stride_v_t + heads * stride_v_h + dims, mask=mask)
    v = round_to_fp8(v.to(tl.float32), EXACT, MANT_BITS, MIN_EXP)
    tl.store(v_buffer_ptr + dst, v.to(v_buffer_ptr.dtype.element_ty), mask=mask)


def _inner_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernel walks head_dim with unit stride; other strides are passed through (qkv-split views).
    return x if x.stride(-1) == 1 else x.contiguous()


def store_kv(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """k_buffer[loc] = k; v_buffer[loc] = v (cast to the buffer dtype).

    k_buffer, v_buffer: [num_slots, num_kv_heads, head_dim] with the same strides;
    k, v: [T, num_kv_heads, head_dim]; loc: [T] integer slot indices.
    Falls back to torch indexing on CPU when the Triton interpreter is off.
    """
    num_tokens = loc.shape[0]
    if num_tokens == 0:
        return
    if not can_launch_on(k.device):
        k_buffer[loc] = k.to(k_buffer.dtype)
        v_buffer[loc] = v.to(v_buffer.dtype)
        return
    assert k_buffer.stride() == v_buffer.stride() and k_buffer.stride(-1) == 1
    k, v = _inner_contiguous(k), _inner_contiguous(v)
    _, num_kv_heads, head_dim = k_buffer.shape
    _store_kv_kernel[(num_tokens,)](
        k, v, k_buffer, v_buffer, loc,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_buffer.stride(0), k_buffer.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        EXACT=exact_rounding(k_buffer.dtype), **fp8_format(k_buffer.dtype), **pdl.launch_args(k.device),
    )


@triton.jit(do_not_specialize_on_alignment=["loc_ptr"])
def _rotary_store_kv_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, k_buffer_ptr, v_buffer_ptr, loc_ptr,
    stride_q_t, stride_q_h, stride_k_t, stride_k_h, stride_v_t, stride_v_h, stride_cs, stride_buffer_s, stride_buffer_h,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_QH: tl.constexpr,
    BLOCK_H: tl.constexpr, PDL: tl.constexpr, EXACT: tl.constexpr, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr,
    QK_EXACT: tl.constexpr,
):
    # One program per token: q rotated in place, k rotated into the pool, v copied into the pool.
    # EXACT and its formats round to the pool's fp8, QK_EXACT to q and k's bfloat16 (runtime/triton_interpreter.py).
    enter_small_kernel(PDL)  # see runtime/pdl.py
    token = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, HALF)[None, :]  # rotate-half: dims [0, HALF) pair with [HALF, 2 HALF)
    cos = tl.load(cos_ptr + token * stride_cs + offs)
    sin = tl.load(sin_ptr + token * stride_cs + offs)

    q_heads = tl.arange(0, BLOCK_QH)[:, None]
    q_mask = q_heads < NUM_HEADS
    q_row = q_ptr + token * stride_q_t + q_heads * stride_q_h
    q1 = tl.load(q_row + offs, mask=q_mask, other=0.0)
    q2 = tl.load(q_row + HALF + offs, mask=q_mask, other=0.0)
    a, b = q1.to(tl.float32), q2.to(tl.float32)
    rot1 = round_to_bf16(a * cos - b * sin, QK_EXACT)
    rot2 = round_to_bf16(b * cos + a * sin, QK_EXACT)
    tl.store(q_row + offs, rot1.to(q1.dtype), mask=q_mask)
    tl.store(q_row + HALF + offs, rot2.to(q1.dtype), mask=q_mask)

    slot = tl.load(loc_ptr + token).to(tl.int64)  # int64: slot * stride can pass 2**31
    heads = tl.arange(0, BLOCK_H)[:, None]
    mask = heads < NUM_KV_HEADS
    dst = slot * stride_buffer_s + heads * stride_buffer_h + offs
    k_row = k_ptr + token * stride_k_t + heads * stride_k_h
    k1 = tl.load(k_row + offs, mask=mask, other=0.0)
    k2 = tl.load(k_row + HALF + offs, mask=mask, other=0.0)
    a, b = k1.to(tl.float32), k2.to(tl.float32)
    # rounded to k's dtype first, as the rotary kernel writes it, then stored as store_kv stores
    rot1 = round_to_bf16(a * cos - b * sin, QK_EXACT).to(k1.dtype).to(tl.float32)
    rot2 = round_to_bf16(b * cos + a * sin, QK_EXACT).to(k1.dtype).to(tl.float32)
    rot1 = round_to_fp8(rot1, EXACT, MANT_BITS, MIN_EXP)
    rot2 = round_to_fp8(rot2, EXACT, MANT_BITS, MIN_EXP)
    tl.store(k_buffer_ptr + dst, rot1.to(k_buffer_ptr.dtype.element_ty), mask=mask)
    tl.store(k_buffer_ptr + dst + HALF, rot2.to(k_buffer_ptr.dtype.element_ty), mask=mask)
    v_row = v_ptr + token * stride_v_t + heads * stride_v_h
    for part in tl.static_range(2):
        v = tl.load(v_row + part * HALF + offs, mask=mask)
        v = round_to_fp8(v.to(tl.float32), EXACT, MANT_BITS, MIN_EXP)
        tl.store(v_buffer_ptr + dst + part * HALF, v.to(v_buffer_ptr.dtype.element_ty), mask=mask)


def can_rotate_and_store(q: torch.Tensor) -> bool:
    """Whether rotary_store_kv takes this step's q: a device Triton launches on, and half a head a
    power of two (the rotate-half tile)."""
    half = q.shape[-1] // 2
    return can_launch_on(q.device) and q.shape[-1] % 2 == 0 and half & (half - 1) == 0 and q.stride(-1) == 1


def rotary_store_kv(
    k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
) -> None:
    """Rotate q [T, H, D] in place and k [T, KvH, D] by RoPE (rotate-half; cos, sin [T, D/2] float32),
    then k_buffer[loc] = rotated k, v_buffer[loc] = v. k itself is left unrotated: attention reads K
    from the pool. q, k, v may be strided views (of the qkv projection's output); needs
    can_rotate_and_store(q)."""
    num_tokens = loc.shape[0]
    if num_tokens == 0:
        return
    assert can_rotate_and_store(q) and k.stride(-1) == 1 and v.stride(-1) == 1
    assert k_buffer.stride() == v_buffer.stride() and k_buffer.stride(-1) == 1
    _, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    assert k.shape[1:] == v.shape[1:] == k_buffer.shape[1:] == (num_kv_heads, head_dim)
    assert cos.shape == sin.shape == (num_tokens, head_dim // 2), "RoPE over the whole head (rotate-half)"
    assert cos.stride(-1) == 1 and cos.stride(0) == sin.stride(0)
    _rotary_store_kv_kernel[(num_tokens,)](
        q, k, v, cos, sin, k_buffer, v_buffer, loc,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0),
        k_buffer.stride(0), k_buffer.stride(1),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HALF=head_dim // 2,
        BLOCK_QH=triton.next_power_of_2(num_heads), BLOCK_H=triton.next_power_of_2(num_kv_heads),
        EXACT=exact_rounding(k_buffer.dtype), **fp8_format(k_buffer.dtype),
        QK_EXACT=exact_bf16(q.dtype), **pdl.launch_args(q.device),
    )


def rotary_store_agrees(num_heads: int, num_kv_heads: int, head_dim: int, q_dtype: torch.dtype,
                        kv_dtype: torch.dtype, device: torch.device) -> bool:
    """A start-up check of rotary_store_kv on this device against RoPE in torch (float32, then the
    dtypes' rounding), to within a rounding step: a kernel that builds but computes wrongly here must
    not serve. Exceptions propagate (a kernel that does not build)."""
    gen = torch.Generator(device=device).manual_seed(0)
    tokens = 3
    q = torch.randn(tokens, num_heads, head_dim, device=device, generator=gen).to(q_dtype)
    k, v = (torch.randn(tokens, num_kv_heads, head_dim, device=device, generator=gen).to(q_dtype) for _ in range(2))
    angles = torch.rand(tokens, head_dim // 2, device=device, generator=gen) * 6.0
    cos, sin = angles.cos(), angles.sin()
    pools = [torch.zeros(tokens + 2, num_kv_heads, head_dim, dtype=kv_dtype, device=device) for _ in range(2)]
    loc = torch.arange(2, tokens + 2, device=device)
    rotated_q = q.clone()
    rotary_store_kv(pools[0], pools[1], loc, rotated_q, k, v, cos, sin)

    def rope(x):
        half = head_dim // 2
        a, b = x.float()[..., :half], x.float()[..., half:]
        c, s = cos[:, None], sin[:, None]
        return torch.cat((a * c - b * s, b * c + a * s), dim=-1).to(q_dtype)

    def near(got, want):  # one rounding step of the coarser format (e4m3: 1/8 relative)
        return torch.allclose(got.float(), want.float(), rtol=0.13, atol=1e-2)

    return (near(rotated_q, rope(q)) and near(pools[0][loc], rope(k).to(kv_dtype)) and near(pools[1][loc], v.to(kv_dtype))
            and not pools[0][0].float().any() and not pools[0][1].float().any())
