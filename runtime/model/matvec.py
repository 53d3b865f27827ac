"""The matrix-vector product of batch-1 decode, y[1, N] = f(x)[1, K] @ W[N, K]^T, as one Triton
kernel that may also compute its input f(x) from the previous op's output:

- plain:     f(x) = x
- silu_mul:  x is gate|up [1, 2K] and f(x) = silu(gate) * up (the MLP's down projection)
- rms_norm:  f(x) = rms_norm(x + residual) * norm_weight, and x + residual is written out too
             (the pre-norm in front of qkv and gate_up)

At batch 1 a decode step is a chain of these products with small kernels between them, and the
step is bound by how fast the weights stream from memory. Each program owns BLOCK_N rows of W and
streams them once over all of K, multiplying on the CUDA cores. Three things keep memory busy:
- With programmatic dependent launch (runtime/pdl.py) the kernel is resident before the previous
  one finishes. It loads its first W tile *before* waiting for x, since the weights do not depend
  on the previous kernel, so one memory latency per product overlaps the previous kernel.
- It lets the next kernel launch as soon as its own loop is done.
- The fused inputs remove a norm or silu·mul kernel, and with it a kernel boundary, in front of
  three of a layer's four products.
(Asking L2 to bulk-prefetch part of the rows before the wait was tried too: on an H200 it made every
projection 2-15% slower, and was dropped.)

Triton software-pipelines only loads that feed a tl.dot, so each program of this kernel has one tile
of W in flight at a time (an sm_90 compile shows plain ld.global, no cp.async). A second kernel,
_vector_tma_kernel, reads W with the tensor-memory accelerator instead: num_stages tiles in flight
per program, as bulk copies into shared memory. The start-up timing
(matmul_choice.py) decides per projection which of the two runs.

With fp8 weights (runtime/model/fp8.py) the kernel reads e4m3 rows, half the bytes, and multiplies
each output by its row's scale at the end. It also rounds f(x) to e4m3 with one scale, as
fp8.quantize_rows does for the rows that go to torch._scaled_mm: a pass over f(x) finds its amax
first (from L2; x is small). So one request decodes with the same operands alone as in a batch.

The fused inputs take the same rounding steps as the unfused kernels in fused.py (add in the model
dtype, float32 statistics, cast, scale, cast). Only the norm's sum of squares differs: fused.py's is
float64 (all but exact), ours float32 by tile, since every program of ours recomputes it and float64
converts are slow on the CUDA cores. A review measured 0 differing elements in 3.3M against
fused.rms_norm when both summed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.model import fp8
from runtime.pdl import gdc_launch_dependents, gdc_wait
from runtime.triton_interpreter import (
    E4M3, copy_engine_addressable, exact_rounding, hopper_or_later, round_to_fp8, tensor_descriptor_class,
)

PLAIN, SILU_MUL, RMS_NORM = 0, 1, 2
FP8_MAX = tl.constexpr(fp8.FP8_MAX)
MIN_SCALE = tl.constexpr(fp8.MIN_SCALE)
E4M3_MANT_BITS = tl.constexpr(E4M3["MANT_BITS"])
E4M3_MIN_EXP = tl.constexpr(E4M3["MIN_EXP"])


@dataclass(frozen=True)
class VectorConfig:
    """Launch shape of the kernel. `tma`: W streams through the tensor-memory accelerator
    (_vector_tma_kernel), num_stages tiles deep, where `tma_fits` says the copy engine can."""

    block_n: int = 16
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3
    tma: bool = False


STATS_BLOCK_MAX = 4096  # x elements per iteration of the copy-engine kernel's statistics pass
TMA_MAX_RING_BYTES = 160 * 1024  # the tiles in flight, in shared memory (an H100/H200 SM has 227 KiB)


def tma_fits(weight: torch.Tensor, config: VectorConfig) -> bool:
    """Whether the copy engine can read `weight` in config's tiles: a GPU of compute capability 9 or
    later (or the CPU interpreter), a Triton with host tensor descriptors, a 16-byte aligned base and
    row stride, tile sides that are powers of two (Triton splits a tile wider than one copy, 256,
    into several), a tile row of at least 16 bytes, and the tiles in flight within shared memory."""
    if not hopper_or_later(weight.device):
        return False
    if tensor_descriptor_class() is None:
        return False
    size = weight.element_size()
    ring_bytes = config.num_stages * config.block_n * config.block_k * size
    powers_of_two = all(d > 0 and d & (d - 1) == 0 for d in (config.block_n, config.block_k))
    return (powers_of_two and config.block_k * size >= 16 and ring_bytes <= TMA_MAX_RING_BYTES
            and copy_engine_addressable(weight))


@triton.jit
def _input_tile(x_ptr, res_ptr, norm_ptr, k, mask_k, K, rstd, INPUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """f(x)[k] in float32, rounded to the model dtype where the unfused kernels round."""
    x = tl.load(x_ptr + k, mask=mask_k, other=0.0)
    if INPUT == 1:  # silu(gate) * up, as fused.silu_and_mul
        up = tl.load(x_ptr + K + k, mask=mask_k, other=0.0)
        g = x.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(x.dtype)
        x = (act.to(tl.float32) * up.to(tl.float32)).to(x.dtype)
    elif INPUT == 2:  # rms_norm(x + residual) * weight, as fused.rms_norm
        if HAS_RESIDUAL:
            x = x + tl.load(res_ptr + k, mask=mask_k, other=0.0)
        normed = (x.to(tl.float32) * rstd).to(x.dtype)
        w = tl.load(norm_ptr + k, mask=mask_k, other=0.0)
        x = (w.to(tl.float32) * normed.to(tl.float32)).to(x.dtype)
    return x.to(tl.float32)


@triton.jit
def _operand_tile(x_ptr, res_ptr, norm_ptr, k, mask_k, K, rstd, x_inverse,
                  INPUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, QUANT_X: tl.constexpr, EXACT: tl.constexpr):
    """f(x)[k] as the product takes it: in float32, or as e4m3 codes of f(x) / scale (QUANT_X)."""
    x = _input_tile(x_ptr, res_ptr, norm_ptr, k, mask_k, K, rstd, INPUT, HAS_RESIDUAL)
    if QUANT_X:
        # EXACT: see runtime/triton_interpreter.py
        x = round_to_fp8(tl.clamp(x * x_inverse, -FP8_MAX, FP8_MAX), EXACT, E4M3_MANT_BITS, E4M3_MIN_EXP)
        x = x.to(tl.float8e4nv).to(tl.float32)
    return x


@triton.jit
def _input_statistics(x_ptr, res_ptr, res_out_ptr, norm_ptr, K, eps, pid, offs_k,
                      BLOCK_K: tl.constexpr, INPUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr):
    """What f(x) needs over all of K before any tile: the norm's 1/rms (program 0 also writes x +
    residual out), and for fp8 weights the scale f(x) is rounded with and its inverse."""
    rstd = 0.0
    if INPUT == 2:  # the norm's statistics over all of x + residual; program 0 writes the sum out
        write_limit = tl.where(pid == 0, K, 0)
        sum_sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            mask_k = k < K
            x = tl.load(x_ptr + k, mask=mask_k, other=0.0)
            if HAS_RESIDUAL:
                x = x + tl.load(res_ptr + k, mask=mask_k, other=0.0)  # added in the model dtype
                tl.store(res_out_ptr + k, x, mask=k < write_limit)
            xf = x.to(tl.float32)
            sum_sq += xf * xf
        rstd = tl.rsqrt(tl.sum(sum_sq, axis=0) / K + eps)
    x_scale = 1.0
    x_inverse = 1.0
    if HAS_SCALE:  # fp8 weights take fp8 inputs, as in torch._scaled_mm: one scale, amax / 448
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            f_x = _input_tile(x_ptr, res_ptr, norm_ptr, k, k < K, K, rstd, INPUT, HAS_RESIDUAL)
            amax = tl.maximum(amax, tl.abs(f_x))
        x_scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), MIN_SCALE)
        x_inverse = tl.math.div_rn(1.0, x_scale)
    return rstd, x_scale, x_inverse


@triton.jit
def _store_rows(acc, y_ptr, w_scale_ptr, offs_n, mask_n, x_scale, PDL: tl.constexpr, HAS_SCALE: tl.constexpr):
    """The end of both kernels: per-lane products summed into each row's output, scaled for fp8."""
    if PDL:
        gdc_launch_dependents()  # after the loop, so the next kernel's programs don't take our SM slots
    y = tl.sum(acc, axis=1)
    if HAS_SCALE:  # fp8 operands: x's scale and each weight row's, once per output
        y = y * x_scale * tl.load(w_scale_ptr + offs_n, mask=mask_n, other=0.0)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _vector_kernel(
    x_ptr, w_ptr, y_ptr, res_ptr, res_out_ptr, norm_ptr, w_scale_ptr, N, K, stride_wn, eps,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
    INPUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, EXACT: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    # The first W tile before the wait: weights are never written during a forward pass, and the
    # loader's writes are followed by ordinary kernels that finish before any of ours starts.
    w_first = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
    if PDL:  # x (and the residual) are the previous kernel's output (see runtime/pdl.py)
        gdc_wait()
    rstd, x_scale, x_inverse = _input_statistics(x_ptr, res_ptr, res_out_ptr, norm_ptr, K, eps, pid, offs_k,
                                                 BLOCK_K, INPUT, HAS_RESIDUAL, HAS_SCALE)
    # products accumulate per (row, lane) and are summed once at the end, not per tile
    x_first = _operand_tile(x_ptr, res_ptr, norm_ptr, offs_k, offs_k < K, K, rstd, x_inverse,
                            INPUT, HAS_RESIDUAL, HAS_SCALE, EXACT)
    acc = w_first.to(tl.float32) * x_first[None, :]
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < K
        w = tl.load(w_rows + k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        x_tile = _operand_tile(x_ptr, res_ptr, norm_ptr, k, mask_k, K, rstd, x_inverse,
                               INPUT, HAS_RESIDUAL, HAS_SCALE, EXACT)
        acc += w.to(tl.float32) * x_tile[None, :]
    _store_rows(acc, y_ptr, w_scale_ptr, offs_n, mask_n, x_scale, PDL, HAS_SCALE)


@triton.jit
def _vector_tma_kernel(
    x_ptr, w_ptr, w_desc, y_ptr, res_ptr, res_out_ptr, norm_ptr, w_scale_ptr, N, K, stride_wn, eps,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, STATS_BLOCK: tl.constexpr, PDL: tl.constexpr,
    INPUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, EXACT: tl.constexpr,
):
    """_vector_kernel with W read by the tensor-memory accelerator: the loop's tiles are bulk copies
    into shared memory, STAGES of them in flight per program, where the plain kernel has one tile of
    loads in flight (Triton does not software-pipeline loads that feed no tl.dot; an sm_90 compile
    showed no cp.async in it). The copy engine fills rows past N and columns past K with zeros."""
    pid = tl.program_id(0)
    row0 = pid * BLOCK_N
    offs_n = row0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < N
    # The first tile by ordinary loads, before the wait as in _vector_kernel: they block nothing
    # until its product, after the loop (a bulk copy would be waited for right here).
    w_first = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                      mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
    if PDL:
        gdc_wait()
    # The statistics pass reads x (from L2) in wider blocks than the narrow W tiles: each of its
    # iterations waits for its loads, and all of it comes before the first product.
    rstd, x_scale, x_inverse = _input_statistics(x_ptr, res_ptr, res_out_ptr, norm_ptr, K, eps, pid,
                                                 tl.arange(0, STATS_BLOCK), STATS_BLOCK, INPUT, HAS_RESIDUAL, HAS_SCALE)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(BLOCK_K, K, BLOCK_K, num_stages=STAGES):
        k = k0 + offs_k
        w = w_desc.load([row0, k0])
        x_tile = _operand_tile(x_ptr, res_ptr, norm_ptr, k, k < K, K, rstd, x_inverse,
                               INPUT, HAS_RESIDUAL, HAS_SCALE, EXACT)
        acc += w.to(tl.float32) * x_tile[None, :]
    # the first tile last: its product does not hold the pipelined loop's first copies back
    x_first = _operand_tile(x_ptr, res_ptr, norm_ptr, offs_k, offs_k < K, K, rstd, x_inverse,
                            INPUT, HAS_RESIDUAL, HAS_SCALE, EXACT)
    acc += w_first.to(tl.float32) * x_first[None, :]
    _store_rows(acc, y_ptr, w_scale_ptr, offs_n, mask_n, x_scale, PDL, HAS_SCALE)


def vector_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    config: VectorConfig = VectorConfig(),
    silu_mul: bool = False,
    norm_weight: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    residual: Optional[torch.Tensor] = None,
    weight_scale: Optional[torch.Tensor] = None,
):
    """x [1, K] @ weight [N, K]^T → [1, N] in x's dtype (float32 accumulation).

    silu_mul: x is [1, 2K] gate|up and the product takes silu(gate) * up.
    norm_weight: the product takes rms_norm(x (+ residual)) * norm_weight and the call returns
    (y, x + residual), or (y, x) without a residual: the residual stream after the add.
    weight_scale: [1, N] float32 row scales of an fp8 weight (fp8.quantize_weight)."""
    n, k = weight.shape
    want = (1, 2 * k) if silu_mul else (1, k)
    if tuple(x.shape) != want:
        raise ValueError(f"vector_matmul takes x of shape {want} for a weight of shape {tuple(weight.shape)}, got {tuple(x.shape)}")
    if x.stride(-1) != 1 or weight.stride(1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("vector_matmul needs contiguous rows")
    if silu_mul and norm_weight is not None:
        raise ValueError("vector_matmul fuses either silu_mul or a norm, not both")
    if (weight.dtype == fp8.FP8) != (weight_scale is not None):
        raise ValueError("vector_matmul takes an fp8 weight together with its weight_scale, and only then")
    if weight_scale is not None and weight_scale.numel() != n:
        raise ValueError(f"vector_matmul takes one weight scale per row ({n}), got {weight_scale.numel()}")
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(x) if residual is not None else x
    mode = RMS_NORM if norm_weight is not None else (SILU_MUL if silu_mul else PLAIN)
    inputs = (residual if residual is not None else x, res_out,
              norm_weight if norm_weight is not None else x, weight_scale if weight_scale is not None else x)
    flags = dict(INPUT=mode, HAS_RESIDUAL=residual is not None, HAS_SCALE=weight_scale is not None, EXACT=exact_rounding(),
                 num_warps=config.num_warps, num_stages=config.num_stages, **pdl.launch_args(x.device))
    grid = (triton.cdiv(n, config.block_n),)
    if config.tma and tma_fits(weight, config):
        # a host descriptor: a CUDA graph keeps its bytes, which stay valid since weights never move
        w_desc = tensor_descriptor_class().from_tensor(weight, [config.block_n, config.block_k])
        _vector_tma_kernel[grid](x, weight, w_desc, y, *inputs, n, k, weight.stride(0), eps, BLOCK_N=config.block_n,
                                 BLOCK_K=config.block_k, STAGES=config.num_stages,
                                 STATS_BLOCK=min(triton.next_power_of_2(k), STATS_BLOCK_MAX), **flags)
    else:  # a weight the copy engine cannot read gets the same tiles through ordinary loads
        _vector_kernel[grid](x, weight, y, *inputs, n, k, weight.stride(0), eps, BLOCK_N=config.block_n,
                             BLOCK_K=config.block_k, **flags)
    return (y, res_out) if norm_weight is not None else y
