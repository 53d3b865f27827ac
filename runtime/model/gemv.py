"""Skinny matmul for decode: y[M, N] = x[M, K] @ W[N, K]^T with M <= 16, as one Triton kernel.

At batch 1 a decode step is a chain of matrix-vector products, bound by how fast W streams from
memory. cuBLAS picks split-K kernels plus a separate reduction for some of the Llama shapes, which
measured 79-89% of copy bandwidth on an H200 (benchmarks/RESULTS.md). Here each program owns
BLOCK_N output columns and streams their rows of W once over all of K: no split, no reduction pass.

Whether it beats cuBLAS depends on the shape, so `choose_skinny_kernels` times both for each
projection of the loaded model at start-up and routes a Linear here only where it measured faster
(timed with the weights streaming from HBM, as in the model, not from L2).

`silu_mul_input=True` applies silu(gate) * up to [M, 2K] gate|up activations while loading them. It
is correct but measured 5x slower than silu_and_mul + cuBLAS on the H200, so nothing uses it yet.

Layout of one program (BLOCK_M = 16 rows of x, masked past M; tensor-core dot per K tile):

    x tile [16, BLOCK_K]  ·  W tile^T [BLOCK_K, BLOCK_N]  →  acc [16, BLOCK_N] (float32)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_M = 16


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 16
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 4


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


# what start-up tries; the best measured in benchmarks/bench_gemv.py on an H200 for every shape
START_UP_CONFIG = GemvConfig(block_n=32, block_k=256, num_warps=4, num_stages=3)
# Below this the win is within run-to-run noise: keep cuBLAS. On the H200 qkv measured 1.08x faster
# alone but batch-1 decode was not faster end to end (198 vs 206 tok/s across two runs).
MIN_SPEEDUP = 1.10


def graph_time_us(fn, reps: int = 10, iters: int = 10) -> float:
    """Median time of fn captured reps times in one CUDA graph (launch cost excluded)."""
    import statistics

    for _ in range(2):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(times)


def time_projection(kind: str, weight: torch.Tensor, m: int) -> float:
    """µs of one [m, K] x weight^T product by "cublas" or "skinny" (our kernel), in a CUDA graph.

    In the model every weight streams from HBM; a shape that fits in L2 would time at cache speed if
    repeated. So the graph cycles through enough copies of the weight to overflow L2 several times."""
    import torch.nn.functional as F

    l2_bytes = getattr(torch.cuda.get_device_properties(weight.device), "L2_cache_size", 64 * 2**20)
    copies = max(1, min(16, -(-4 * l2_bytes // (weight.numel() * weight.element_size()))))
    weights = [weight.clone() for _ in range(copies)]
    x = torch.randn(m, weight.shape[1], dtype=weight.dtype, device=weight.device)
    if kind == "cublas":
        calls = [lambda w=w: F.linear(x, w) for w in weights]
    else:
        calls = [lambda w=w: skinny_matmul(x, w, config=START_UP_CONFIG) for w in weights]

    def run_all():
        for call in calls:
            call()

    return graph_time_us(run_all, reps=1) / copies


def _half_on_cuda(weight: torch.Tensor) -> bool:
    # tl.dot would round float32 to tf32: float32 models stay on cuBLAS
    return weight.is_cuda and weight.dtype in (torch.float16, torch.bfloat16) and weight.stride(1) == 1


def choose_skinny_kernels(model: torch.nn.Module, timer=time_projection, eligible=_half_on_cuda) -> dict:
    """Time cuBLAS and skinny_matmul on each distinct Linear weight shape at M = 1 and M = MAX_M and
    set `skinny_max_m` on every Linear of that shape: MAX_M where Triton won at both, 1 where it won
    only at M = 1, 0 (cuBLAS) otherwise. Returns {(N, K): skinny_max_m}."""
    from runtime.model.layers import Linear

    chosen: dict[tuple[int, int], int] = {}
    spun_up = False
    for layer in model.modules():
        if not isinstance(layer, Linear) or not eligible(layer.weight):
            continue
        key = tuple(layer.weight.shape)
        if key not in chosen:
            if not spun_up and layer.weight.is_cuda:
                _spin_up(layer.weight)
                spun_up = True
            wins = []
            for m in (1, MAX_M):
                cublas, skinny = _least_times(timer, layer.weight, m)
                wins.append(cublas >= MIN_SPEEDUP * skinny)
            chosen[key] = MAX_M if all(wins) else (1 if wins[0] else 0)
        layer.skinny_max_m = chosen[key]
    return chosen


def _least_times(timer, weight: torch.Tensor, m: int, rounds: int = 3) -> tuple[float, float]:
    """(cuBLAS, skinny) µs, each the least of `rounds` timings taken alternately: interference and
    clock changes only ever add time, and alternating spreads any drift over both."""
    cublas = skinny = float("inf")
    for _ in range(rounds):
        cublas = min(cublas, timer("cublas", weight, m))
        skinny = min(skinny, timer("skinny", weight, m))
    return cublas, skinny


def _spin_up(weight: torch.Tensor, seconds: float = 0.3) -> None:
    """Keep the GPU busy until its clocks settle before timing. On an H100, start-up once gave qkv
    (the first shape timed) to our kernel, which a later measurement of the same shapes showed 20%
    slower than cuBLAS there; batch-1 decode ran at 151.5 tok/s against 155.9 in an earlier run.
    Most likely the idle GPU's clocks had not settled. Timings now also take the least of 3 rounds."""
    a = torch.randn(4096, 4096, dtype=weight.dtype, device=weight.device)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize(weight.device)
