"""A batch-invariant matrix product, for deterministic inference (EngineConfig.deterministic_inference).

The fast paths pick a kernel by shape: one decode row takes our vector kernel, eight rows another
kernel, a 4k-token prefill chunk a cuBLAS kernel of its own choosing (split-K for some shapes). Each
sums a row's K products in its own order, so in bfloat16 the same row gets logits an ulp apart
alone, in a batch or in another chunk, and near-ties flip a greedy token.

Here every product of one weight runs one Triton launch shape, chosen from the weight's shape only:
a row's sum is always its K products in BLOCK_K chunks, in order, each chunk one tl.dot of the same
shape, and rows never meet. So a row's output has the same bits whatever else is in the batch.
The price is speed: cuBLAS and the vector kernel are faster (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime.triton_interpreter import CPU_SHARED_MEMORY, can_launch_on, shared_memory_bytes, sm_count


@dataclass(frozen=True)
class InvariantConfig:
    block_m: int = 64  # rows per program: fewer rows are masked, never a smaller tile
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3


# Deeper K tiles first: at one row the product streams the weight, and a program with more of it in
# flight streams faster. On an H100 (bench_invariant_matmul.py, µs at M = 1 / M = 4096) K tiles of 128 in
# four stages took qkv 30.3 → 21.4 / 1,050 → 1,078, o 26.9 → 15.6 / 695 → 716, gate_up 87.3 → 82.6 /
# 2,244 → 2,190 and lm_head 351 → 337 / 10,579 → 10,627; down (K = 14,336, 32-wide column tiles)
# 92.1 → 48.2 / 2,772 → 3,091 with tiles of 256 in three. A decode step's products take ~28% less time,
# a prefill chunk's ~5% more. The first shape that fits the card's shared memory is taken.
LONG_K = 8192
HALF_SHAPES_LONG_K = ((256, 3), (128, 4), (128, 3), (64, 3), (64, 2))  # (block_k, stages), 16-bit inputs
HALF_SHAPES = ((128, 4), (128, 3), (64, 3), (64, 2))
FLOAT32_SHAPES = ((64, 2),)  # tests and the CPU; three stages need ~150 KB, more than many GPUs have


def invariant_config(n: int, k: int, num_sms: int, dtype: torch.dtype = torch.bfloat16,
                     shared_memory: int = CPU_SHARED_MEMORY) -> InvariantConfig:
    """The launch shape for a weight [n, k]: the widest column tile that still gives every SM a
    program at one row (a decode step streams the weight, and idle SMs stream nothing), then the
    deepest K tile and pipeline (above) whose buffers fit `shared_memory` bytes. It depends on the
    weight and the card, never on the number of rows."""
    block_n = 32
    for wide in (128, 64):
        if triton.cdiv(n, wide) >= num_sms:
            block_n = wide
            break
    if dtype == torch.float32:
        shapes = FLOAT32_SHAPES
    else:
        shapes = HALF_SHAPES_LONG_K if block_n == 32 and k >= LONG_K else HALF_SHAPES
    block_m = InvariantConfig.block_m
    for block_k, stages in shapes:
        if stages * (block_m + block_n) * block_k * dtype.itemsize <= shared_memory:
            break
    return InvariantConfig(block_n=block_n, block_k=block_k, num_stages=stages)


# M changes every step: not specialised (M == 1, M % 16 == 0), so the first steps compile nothing new
@triton.jit(do_not_specialize=["M"])
def _invariant_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < K
        x = tl.load(x_rows + k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_rows + k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:  # in float32, before the one rounding to the output dtype (as cuBLAS's epilogue)
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def invariant_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     num_sms: int | None = None, config: InvariantConfig | None = None) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias [N]) → [M, N] in x's dtype (float32 accumulation), each
    row's bits independent of M and of the other rows. `num_sms` overrides the device's (tests);
    `config` the launch shape (benchmarks: the invariance holds for any shape kept fixed across M)."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"invariant_matmul takes x [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"invariant_matmul takes x and weight of one dtype, got {x.dtype} and {weight.dtype}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        raise ValueError("invariant_matmul needs a weight with contiguous rows")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.stride(0) != 1):
        raise ValueError(f"invariant_matmul takes a contiguous bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    if not can_launch_on(x.device):
        raise RuntimeError("invariant_matmul runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1")
    if config is None:
        config = invariant_config(n, k, sm_count(x.device) if num_sms is None else num_sms, x.dtype,
                                  shared_memory_bytes(x.device))
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n))
    _invariant_kernel[grid](
        x, weight, bias if bias is not None else weight, y, m, n, k, x.stride(0), weight.stride(0), y.stride(0),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", HAS_BIAS=bias is not None,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y
