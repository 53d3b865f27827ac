"""Skinny matmul for decode: y[M, N] = x[M, K] @ W[N, K]^T with M <= 16, as Triton kernels.

At batch 1 a decode step is a chain of matrix-vector products, bound by how fast W streams from
memory. cuBLAS reaches 94% of copy bandwidth on the big MLP weights of a Llama-3-8B layer but only
71-80% on o_proj and qkv (H100, benchmarks/RESULTS.md): a 32 MB weight streams in ~11 µs, and the
kernel's ramp-up, its drain and the small kernels between two products leave memory idle.

- M = 1: the matrix-vector kernel of runtime/model/matvec.py.
- 2 <= M <= 16 (`_skinny_matmul_kernel`): each program owns BLOCK_N rows of W and streams them once
  over all of K, with a tensor-core dot per K tile (x tile [16, BLOCK_K] · W tile^T
  [BLOCK_K, BLOCK_N], rows past M masked).

Whether either beats cuBLAS depends on the shape and the card, so start-up times them on each
projection of the loaded model and routes a Linear here only where it measured faster
(runtime/model/matmul_choice.py).

`silu_mul_input=True` applies silu(gate) * up to [M, 2K] gate|up activations while loading them. It
is correct but measured 5x slower than silu_and_mul + cuBLAS on the H200, so nothing uses it yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime.model.matvec import VectorConfig, vector_matmul

MAX_M = 16


@dataclass(frozen=True)
class GemvConfig(VectorConfig):
    """Launch shape of the skinny kernel. The defaults are the best measured for every Llama-3-8B
    projection on an H200 (benchmarks/bench_gemv.py); start-up times the kernel with them too."""

    block_n: int = 32
    block_k: int = 256
    num_stages: int = 3


@triton.jit
def _skinny_matmul_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym, up_offset,
    SILU_MUL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < K
        if EVEN_K:
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + k[None, :], mask=mask_n[:, None], other=0.0)
        else:
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + k[None, :],
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        x_off = offs_m[:, None] * stride_xm + k[None, :]
        x_mask = mask_m[:, None] & mask_k[None, :]
        x = tl.load(x_ptr + x_off, mask=x_mask, other=0.0)
        if SILU_MUL:
            gate = x.to(tl.float32)
            up = tl.load(x_ptr + up_offset + x_off, mask=x_mask, other=0.0).to(tl.float32)
            # silu in float32, rounded to the activation dtype like the unfused kernel's output
            x = (gate / (1.0 + tl.exp(-gate)) * up).to(w.dtype)
        acc += tl.dot(x.to(w.dtype), tl.trans(w))
    y_off = offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def skinny_matmul(
    x: torch.Tensor, weight: torch.Tensor, silu_mul_input: bool = False, config: GemvConfig = GemvConfig()
) -> torch.Tensor:
    """x [M, K] (or [M, 2K] gate|up with silu_mul_input), weight [N, K] → [M, N] in weight's dtype.

    M must be <= MAX_M; x's and weight's last dimensions must be contiguous."""
    m = x.shape[0]
    n, k = weight.shape
    if m > MAX_M:
        raise ValueError(f"skinny_matmul handles at most {MAX_M} rows, got {m}")
    want_k = 2 * k if silu_mul_input else k
    if x.shape[1] != want_k:
        raise ValueError(f"x has {x.shape[1]} columns, expected {want_k} for a weight of shape {tuple(weight.shape)}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("skinny_matmul needs contiguous rows")
    if m == 1 and not silu_mul_input:
        return vector_matmul(x, weight)
    y = torch.empty(m, n, dtype=weight.dtype, device=x.device)
    if m == 0:
        return y
    grid = (triton.cdiv(n, config.block_n),)
    _skinny_matmul_kernel[grid](
        x, weight, y, m, n, k, x.stride(0), weight.stride(0), y.stride(0), k,
        SILU_MUL=silu_mul_input, BLOCK_M=MAX_M, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        EVEN_K=k % config.block_k == 0, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y
