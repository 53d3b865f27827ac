"""The MLP's gated product in one kernel: silu(x @ W_gate^T) * (x @ W_up^T), from the merged gate_up
weight [2I, K] (gate rows first) straight to [M, I].

cuBLAS writes the whole gate_up output [M, 2I] and a second kernel reads it back to write silu·mul
[M, I]: at a prefill step of 8k tokens of a Llama-3-8B layer that is ~0.7 GB of traffic and ~170 µs
on an H200, and the offline benchmark spent 0.59 s of its ~29 s there (benchmarks/RESULTS.md). Here
each program holds a gate tile and the matching up tile of the same output columns in two
accumulators, so the activation is applied in registers and only [M, I] is written.

The rounding is HF's (and layers.silu_and_mul's): gate and up are rounded to the model dtype as a
matmul's output would be, silu in float32 rounded to the model dtype, the product rounded once more.
The accumulation order is this kernel's own, as any other GEMM's is its own: results agree with
cuBLAS to rounding, not bit for bit. Whether it beats cuBLAS + silu·mul depends on the card and M, so
the model uses it only where start-up timing found it faster (gated_choice.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from runtime.triton_interpreter import (
    can_launch_on, copy_engine_addressable, exact_bf16, hopper_or_later, round_to_bf16, shared_memory_bytes,
    tensor_descriptor_class,
)


@dataclass(frozen=True)
class GatedConfig:
    """Launch shape. Each program computes a block_m × block_n tile of the output, which takes
    block_n gate rows and block_n up rows of the weight: two block_m × block_n accumulators."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8  # row blocks that sweep the columns together, so each weight tile is read once per group
    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False  # x's and the weight's tiles through the tensor-memory accelerator (Hopper and later)
    # with tma: Triton's warp specialisation, a producer warp issuing the copies while the others run
    # the products (not timed on a GPU yet, so in no candidate; a Triton without it fails to build it)
    warp_specialize: bool = False

    def shared_bytes(self, itemsize: int) -> int:
        """Shared memory its pipeline takes: num_stages × (an x tile + a gate and an up tile)."""
        return self.num_stages * (self.block_m + 2 * self.block_n) * self.block_k * itemsize

    def __str__(self) -> str:
        return (f"gated {self.block_m}x{self.block_n}x{self.block_k}/w{self.num_warps}/s{self.num_stages}"
                f"{'/tma' if self.tma else ''}{'/ws' if self.warp_specialize else ''}")


# The shapes start-up timing tries (gated_choice.py). Not yet timed on a GPU: they are the usual
# Hopper bf16 GEMM tiles (two 128-wide accumulators behave like one 128 × 256 tile), a 64-row shape
# for decode batches of a few hundred rows, where 128-row blocks would pad most, each with its
# operands through plain loads and through the copy engine; and for batches of a few dozen rows,
# where the product streams the weight, 64-wide column tiles: twice the programs (224 for
# Llama-3-8B's I = 14,336, against 112 for 132 SMs), so every SM has weight to stream.
CANDIDATES = (
    GatedConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3),
    GatedConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=4, tma=True),
    GatedConfig(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=4),
    GatedConfig(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=4, tma=True),
    GatedConfig(block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=3, tma=True),
)


def fits(config: GatedConfig, weight: torch.Tensor) -> bool:
    """Whether `config` can run on `weight`'s device: its pipeline within the shared memory, and for
    the copy engine a Hopper GPU (or the interpreter), host tensor descriptors, tile sides that are
    powers of two and a 16-byte aligned weight (x is checked at each call)."""
    if config.shared_bytes(weight.element_size()) > shared_memory_bytes(weight.device):
        return False
    if not config.tma:
        return True
    if not hopper_or_later(weight.device):
        return False
    sides = (config.block_n, config.block_k)
    return (tensor_descriptor_class() is not None and all(d & (d - 1) == 0 for d in sides)
            and copy_engine_addressable(weight))


@triton.jit
def _copied_tiles(x_desc, w_desc, row0, col0, I, k0):
    """The x, gate and up tiles at K offset k0, through the copy engine. Past M and K it reads zeros.
    Gate rows past I (when the tile does not divide I) read up rows instead; they only feed output
    columns past I, which are never stored."""
    return x_desc.load([row0, k0]), w_desc.load([col0, k0]), w_desc.load([I + col0, k0])


# M changes every step: not specialised, so a new batch size compiles nothing new
@triton.jit(do_not_specialize=["M"])
def _silu_mul_matmul_kernel(
    x_ptr, x_desc, w_ptr, w_desc, y_ptr, M, I, K, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, EXACT: tl.constexpr,
):
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(I, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < I
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    gate_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    up_rows = w_ptr + (offs_n + I)[:, None].to(tl.int64) * stride_wn
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if WARP_SPECIALIZE:  # a loop of its own: a Triton without the option never compiles this one
        for k0 in tl.range(0, K, BLOCK_K, warp_specialize=True):
            x, gate, up = _copied_tiles(x_desc, w_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, I, k0)
            acc_gate = tl.dot(x, tl.trans(gate), acc_gate, input_precision=DOT_PRECISION)
            acc_up = tl.dot(x, tl.trans(up), acc_up, input_precision=DOT_PRECISION)
    else:
        for k0 in range(0, K, BLOCK_K):
            if TMA:
                x, gate, up = _copied_tiles(x_desc, w_desc, pid_m * BLOCK_M, pid_n * BLOCK_N, I, k0)
            else:
                k = k0 + offs_k
                mask_k = k < K
                x = tl.load(x_rows + k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                w_mask = mask_n[:, None] & mask_k[None, :]
                gate = tl.load(gate_rows + k[None, :], mask=w_mask, other=0.0)
                up = tl.load(up_rows + k[None, :], mask=w_mask, other=0.0)
            acc_gate = tl.dot(x, tl.trans(gate), acc_gate, input_precision=DOT_PRECISION)
            acc_up = tl.dot(x, tl.trans(up), acc_up, input_precision=DOT_PRECISION)

    out_dtype = y_ptr.dtype.element_ty
    # each rounding where the unfused path rounds: the matmul's output, F.silu's, the product's
    g = round_to_bf16(acc_gate, EXACT).to(out_dtype).to(tl.float32)
    u = round_to_bf16(acc_up, EXACT).to(out_dtype).to(tl.float32)
    act = round_to_bf16(g / (1.0 + tl.exp(-g)), EXACT).to(out_dtype).to(tl.float32)
    y = round_to_bf16(act * u, EXACT).to(out_dtype)
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :], y,
             mask=mask_m[:, None] & mask_n[None, :])


def silu_mul_matmul(x: torch.Tensor, weight: torch.Tensor, config: GatedConfig = GatedConfig()) -> torch.Tensor:
    """x [M, K], weight [2I, K] (gate rows, then up rows) → silu(x @ gate^T) * (x @ up^T) [M, I] in x's
    dtype. Where `config` cannot run (see `fits`) its copy-engine tiles fall back to plain loads."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"silu_mul_matmul takes x [M, K] and weight [2I, K], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if weight.shape[0] % 2:
        raise ValueError(f"silu_mul_matmul's weight stacks gate and up rows: an even number, got {weight.shape[0]}")
    if x.dtype != weight.dtype:
        raise ValueError(f"silu_mul_matmul takes x and weight of one dtype, got {x.dtype} and {weight.dtype}")
    if not can_launch_on(x.device):
        raise RuntimeError("silu_mul_matmul runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1")
    if x.stride(1) != 1:
        x = x.contiguous()
    if weight.stride(1) != 1:
        raise ValueError("silu_mul_matmul needs a weight with contiguous rows")
    m, k = x.shape
    inner = weight.shape[0] // 2
    y = torch.empty(m, inner, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    tma = config.tma and fits(config, weight) and copy_engine_addressable(x)
    # Host descriptors, whose bytes a CUDA graph keeps: valid, since weights never move and a graph's
    # x is its static input buffer. Their sizes are not specialised on, so M compiles nothing new.
    descriptor = tensor_descriptor_class()
    x_desc = descriptor.from_tensor(x, [config.block_m, config.block_k]) if tma else x
    w_desc = descriptor.from_tensor(weight, [config.block_n, config.block_k]) if tma else weight
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(inner, config.block_n),)
    _silu_mul_matmul_kernel[grid](
        x, x_desc, weight, w_desc, y, m, inner, k, x.stride(0), weight.stride(0), y.stride(0),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m, TMA=tma,
        WARP_SPECIALIZE=tma and config.warp_specialize,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", EXACT=exact_bf16(x.dtype),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return y
