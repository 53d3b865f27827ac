"""Fused elementwise kernels for the GPU (Triton): RMSNorm with the residual add, SiLU·mul, rotary.

At batch 1 a Llama layer is ~25 tiny elementwise kernels around 4 matmuls; each costs a launch and a
trip through memory. These replace them one kernel each, with the exact rounding of the torch
versions in layers.py / rotary.py (float32 math, cast to the model dtype where torch casts), so
outputs match them bit for bit in float32 and to rounding in 16-bit. CPU tensors never come here,
except in tests under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.pdl import enter_small_kernel
from runtime.triton_interpreter import E4M3, exact_rounding, round_to_fp8


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, scale_ptr, n_cols, stride_x, stride_r, stride_o, eps,
                     min_scale, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
                     QUANTIZE: tl.constexpr, FP8_MAX: tl.constexpr, EXACT: tl.constexpr, MANT_BITS: tl.constexpr,
                     MIN_EXP: tl.constexpr):
    # With QUANTIZE the normed row, rounded to the model dtype as it would be stored, goes straight
    # through fp8.quantize_rows' arithmetic (amax, div_rn scale, the reciprocal, the e4m3 cast): an
    # fp8 projection's input, with no bf16 copy of it in memory.
    enter_small_kernel(PDL)  # see runtime/pdl.py
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = x + tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)  # added in the model dtype
        tl.store(res_out_ptr + row * n_cols + cols, x, mask=mask)
    xf = x.to(tl.float32)
    # The squares summed in float64, where a 16-bit row's sum is exact (or all but), so it does not
    # depend on the order of the reduction, which follows the layout: the QUANTIZE variant spreads a
    # row 16 to a thread (fp8 stores) and the plain one 8, and in float32 their 1/rms differed in
    # the last bit for ~1 row in 20,000, which flipped an e4m3 rounding now and then on an H200.
    sum_sq = tl.sum(xf.to(tl.float64) * xf.to(tl.float64), axis=0)
    variance = (sum_sq / n_cols).to(tl.float32)
    normed = (xf * tl.rsqrt(variance + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)
    if QUANTIZE:
        yf = tl.where(mask, y.to(tl.float32), 0.0)
        scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(yf), axis=0), FP8_MAX), min_scale)
        tl.store(scale_ptr + row, scale)
        q = round_to_fp8(tl.clamp(yf * tl.math.div_rn(1.0, scale), -FP8_MAX, FP8_MAX), EXACT, MANT_BITS, MIN_EXP)
        tl.store(out_ptr + row * stride_o + cols, q.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + row * stride_o + cols, y, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """x [T, N] → rms_norm(x) (and with `residual`: (rms_norm(x + residual), x + residual))."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = _launch_rms_norm(x, weight, eps, residual, out, None)
    return (out, res_out) if residual is not None else out


def rms_norm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """fp8.quantize_rows(rms_norm(x (+ residual))) in one kernel, bit for bit: x [T, N] → (e4m3
    [T, N], float32 scales [T, 1], the residual stream: x + residual, or x without a residual)."""
    from runtime.model import fp8

    out = torch.empty(x.shape, dtype=fp8.FP8, device=x.device)
    scale = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    res_out = _launch_rms_norm(x, weight, eps, residual, out, scale)
    return out, scale, (res_out if residual is not None else x)


def _launch_rms_norm(x, weight, eps, residual, out, scale) -> torch.Tensor:
    from runtime.model import fp8

    rows, cols = x.shape
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else out
    if rows:
        _rms_norm_kernel[(rows,)](
            x, residual if residual is not None else x, weight, out, res_out, scale if scale is not None else x,
            cols, x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), eps, fp8.MIN_SCALE,
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(cols), num_warps=8 if cols >= 2048 else 4,
            QUANTIZE=scale is not None, FP8_MAX=fp8.FP8_MAX, EXACT=exact_rounding(), **E4M3, **pdl.launch_args(x.device),
        )
    return res_out


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n_cols, stride_x, BLOCK: tl.constexpr, PDL: tl.constexpr):
    enter_small_kernel(PDL)  # see runtime/pdl.py
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # F.silu rounds to the model dtype
    tl.store(out_ptr + row * n_cols + cols, (act.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate rows first) → silu(gate) * up, [T, I]."""
    rows, width = gate_up.shape
    half = width // 2
    out = torch.empty((rows, half), dtype=gate_up.dtype, device=gate_up.device)
    if rows:
        block = 1024
        _silu_mul_kernel[(rows, triton.cdiv(half, block))](
            gate_up, out, half, gate_up.stride(0), BLOCK=block,
            **pdl.launch_args(gate_up.device),
        )
    return out


@triton.jit
def _rotary_kernel(x_ptr, cos_ptr, sin_ptr, stride_t, stride_h, stride_cs, num_heads,
                   HALF: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    enter_small_kernel(PDL)  # see runtime/pdl.py
    token = tl.program_id(0)
    heads = tl.arange(0, BLOCK_H)[:, None]
    offs = tl.arange(0, HALF)[None, :]
    mask = heads < num_heads
    cos = tl.load(cos_ptr + token * stride_cs + offs)
    sin = tl.load(sin_ptr + token * stride_cs + offs)
    base = x_ptr + token * stride_t + heads * stride_h
    x1 = tl.load(base + offs, mask=mask, other=0.0)
    x2 = tl.load(base + HALF + offs, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(base + offs, (a * cos - b * sin).to(x1.dtype), mask=mask)
    tl.store(base + HALF + offs, (b * cos + a * sin).to(x1.dtype), mask=mask)


def rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, D] in place (x may be a strided view, e.g. of a fused qkv output) by
    cos, sin [T, D/2] float32 (rotate-half layout). Returns x."""
    tokens, heads, dim = x.shape
    assert x.stride(2) == 1 and cos.stride(1) == 1 and cos.stride(0) == sin.stride(0)
    if tokens:
        _rotary_kernel[(tokens,)](x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), heads,
                                  HALF=dim // 2, BLOCK_H=triton.next_power_of_2(heads),
                                  **pdl.launch_args(x.device))
    return x
