"""Write a step's new K/V into the paged KV pool at out_cache_loc, in one launch for K and V."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.pdl import enter_small_kernel
from runtime.triton_interpreter import can_launch_on, exact_rounding, fp8_format, round_to_fp8


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
