"""Which kernel multiplies each decode projection: cuBLAS or our kernels in gemv.py, chosen at
start-up by timing them on the loaded model's weight shapes, on this card.

- M = 1 (batch-1 decode): cuBLAS against the vector kernel in each of a few launch shapes. On an
  H200 the best shape differed by projection (o_proj and down_proj liked 1,024-wide K tiles, qkv
  512) and the wrong one cost up to 30%, so the choice is per shape, not one global config.
- 2 <= M <= 16: cuBLAS against the skinny kernel.
- fp8 weights (fp8.py): at M = 1 the vector kernel reading fp8 against torch._scaled_mm; larger M
  always runs _scaled_mm (the skinny kernel reads 16-bit weights only).

Where the vector kernel also computes its input (the norm in front of qkv and gate_up, silu·mul in
front of down: `Linear.fused_input`), cuBLAS is timed together with the kernel that input then
needs, since that is what the model runs either way. On an H200, gate_up alone timed at cuBLAS's
54.9 µs (101% of copy) and kept cuBLAS plus a separate norm kernel per layer.

A kernel is used only where it wins by a margin, since a win inside the noise of the timing is no
win. The timing cycles through enough copies of the weight to overflow L2, as in the model where every
weight streams from HBM, and with PDL on consecutive products overlap as in the model too.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

import torch

from runtime.model.gemv import MAX_M
from runtime.model.matvec import VectorConfig, tma_fits

logger = logging.getLogger(__name__)

# the vector kernel's launch shapes tried; each of the first four was the best for some projection
# in bench_pdl.py. The copy-engine shapes (matvec.py) are not yet timed on a GPU, so they are only
# candidates: several tiles in flight per program, 256 and 512 wide. An sm_90 compile put them at
# 14-68 KB of shared memory and 72-167 registers a thread, with no spills.
TMA_CANDIDATES = (
    VectorConfig(block_n=16, block_k=256, num_warps=4, num_stages=4, tma=True),
    VectorConfig(block_n=16, block_k=256, num_warps=4, num_stages=8, tma=True),
    VectorConfig(block_n=16, block_k=512, num_warps=4, num_stages=4, tma=True),
)
VECTOR_CANDIDATES = (
    VectorConfig(block_n=16, block_k=512, num_warps=4, num_stages=3),
    VectorConfig(block_n=16, block_k=1024, num_warps=4, num_stages=2),
    VectorConfig(block_n=16, block_k=512, num_warps=8, num_stages=3),
    VectorConfig(block_n=8, block_k=1024, num_warps=4, num_stages=2),
) + TMA_CANDIDATES
# fp8 rows are half the bytes: tiles twice as long along K move what a 16-bit tile moves
FP8_VECTOR_CANDIDATES = VECTOR_CANDIDATES + (
    VectorConfig(block_n=16, block_k=2048, num_warps=4, num_stages=2),
    VectorConfig(block_n=8, block_k=2048, num_warps=4, num_stages=2),
    VectorConfig(block_n=32, block_k=256, num_warps=4, num_stages=8, tma=True),
)
# Below these the win is within run-to-run noise: keep cuBLAS. The skinny kernel's bar is higher:
# on the H200 qkv measured 1.08x faster alone but batch-1 decode was not faster end to end.
MIN_SPEEDUP_VECTOR = 1.03
# Where the vector kernel computes its own input (the norm before qkv and gate_up, silu·mul before
# down) it also takes a kernel boundary out of the step, which timing each route alone does not see.
# On an H200 gate_up timed 2-2.5% faster than cuBLAS + the norm, under the bar above, and batch-1
# decode was 1.8% and 1.4% faster in two A/Bs where it ran anyway. So there any win counts, unless
# the bar above is set to 0 or inf to force every route one way (tests, benchmarks).
MIN_SPEEDUP_VECTOR_FUSED_INPUT = 1.0
MIN_SPEEDUP = 1.10


@dataclass(frozen=True)
class Route:
    """How one Linear multiplies decode batches."""

    vector: VectorConfig | None = None  # M = 1: the vector kernel in this launch shape; None: cuBLAS
    skinny_max_m: int = 0  # 2 <= M <= this: the skinny kernel; 0: cuBLAS
    # the M = 1 timings the choice was made on, µs by kind's name (benchmarks print them)
    m1_us: dict = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        m1 = "cublas" if self.vector is None else kind_name(self.vector)
        return f"M=1 {m1}, M<={self.skinny_max_m} skinny" if self.skinny_max_m else f"M=1 {m1}"


def kind_name(kind) -> str:
    """"cublas", "skinny", or a vector launch shape as "vector 16x256/w4/s8[/tma]"."""
    if not isinstance(kind, VectorConfig):
        return str(kind)
    return f"vector {kind.block_n}x{kind.block_k}/w{kind.num_warps}/s{kind.num_stages}{'/tma' if kind.tma else ''}"


def graph_time_us(fn, reps: int = 10, iters: int = 10) -> float:
    """Median time of fn captured reps times in one CUDA graph (launch cost excluded)."""
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


def l2_overflowing_copies(weight: torch.Tensor) -> int:
    """How many copies of `weight` a timing cycles through so that together they overflow L2 four
    times over (2 to 16): each then streams from HBM, as every weight does in the model."""
    props = torch.cuda.get_device_properties(weight.device) if weight.is_cuda else None
    l2_bytes = getattr(props, "L2_cache_size", 64 * 2**20)
    return max(2, min(16, -(-4 * l2_bytes // (weight.numel() * weight.element_size()))))


def time_projection(kind, weight: torch.Tensor, m: int, weight_scale: torch.Tensor | None = None,
                    act_dtype: torch.dtype = torch.bfloat16, fused_input: str | None = None) -> float:
    """µs of one [m, K] x weight^T product, in a CUDA graph. `kind`: "cublas" (torch._scaled_mm for an
    fp8 weight, which comes with its `weight_scale`), "skinny" (the skinny kernel) or a VectorConfig
    (the vector kernel, m = 1). x is in the weight's dtype, or `act_dtype` for an fp8 weight.
    `fused_input` (m = 1): the product's input is made from x by that op (layers.NORM_INPUT,
    SILU_MUL_INPUT), inside the vector kernel or, for cuBLAS, by its own kernel first.

    In the model every weight streams from HBM; a shape that fits in L2 would time at cache speed if
    repeated. So the graph cycles through enough copies of the weight to overflow L2 several times."""
    from runtime.model.layers import (
        NORM_INPUT, SILU_MUL_INPUT, Linear, RMSNorm, linear_after_silu_mul, norm_then_linear,
    )

    copies = l2_overflowing_copies(weight)
    dtype = act_dtype if weight_scale is not None else weight.dtype
    n, k = weight.shape
    x = torch.randn(m, 2 * k if fused_input == SILU_MUL_INPUT else k, dtype=dtype, device=weight.device)
    residual = torch.randn(m, k, dtype=dtype, device=weight.device)
    with torch.device("meta"):  # modules without storage of their own: they take the tensors below
        norm = RMSNorm(k, 1e-6)
        linears = [Linear(k, n) for _ in range(copies)]
    norm.weight = torch.nn.Parameter(torch.ones(k, dtype=dtype, device=weight.device), requires_grad=False)
    for linear in linears:  # routed as the model routes this layer, through the layers.py code it runs
        linear.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        linear.weight_scale = weight_scale
        linear.vector_config = None if kind in ("cublas", "skinny") else kind
        linear.skinny_max_m = m if kind == "skinny" else 0

    def project(linear):
        if fused_input == NORM_INPUT:
            return norm_then_linear(norm, linear, x, residual)
        return linear_after_silu_mul(linear, x) if fused_input == SILU_MUL_INPUT else linear(x)

    calls = [lambda linear=linear: project(linear) for linear in linears]

    def run_all():
        for call in calls:
            call()

    return graph_time_us(run_all, reps=1) / copies


def _eligible(layer) -> bool:
    # tl.dot would round float32 to tf32: float32 models stay on cuBLAS
    weight = layer.weight
    low_precision = weight.dtype in (torch.float16, torch.bfloat16) or layer.weight_scale is not None
    return weight.is_cuda and low_precision and weight.stride(1) == 1


def choose_matmul_routes(
    model: torch.nn.Module, timer=time_projection, eligible=_eligible, vector_candidates=None,
    fp8_vector_candidates=None,
) -> dict:
    """Time cuBLAS and our kernels on each distinct Linear weight shape (and input, `fused_input`) at
    M = 1 and M = MAX_M and set `vector_config` and `skinny_max_m` on every Linear of that kind.
    The vector kernel's launch shapes default to this module's VECTOR_CANDIDATES and
    FP8_VECTOR_CANDIDATES as they are at the call. Returns {(N, K[, "fp8"][, fused_input]): Route}."""
    from runtime.model.layers import Linear

    vector_candidates = VECTOR_CANDIDATES if vector_candidates is None else vector_candidates
    fp8_vector_candidates = FP8_VECTOR_CANDIDATES if fp8_vector_candidates is None else fp8_vector_candidates

    chosen: dict[tuple, Route] = {}
    spun_up = False
    for layer in model.modules():
        if not isinstance(layer, Linear) or not eligible(layer):
            continue
        fp8 = layer.weight_scale is not None
        fused_input = getattr(layer, "fused_input", None)
        key = (*layer.weight.shape, *(["fp8"] if fp8 else []), *([fused_input] if fused_input else []))
        if key not in chosen:
            if not spun_up and layer.weight.is_cuda:
                spin_up(layer.weight)
                spun_up = True
            scale = {"weight_scale": layer.weight_scale} if fp8 else {}
            # a copy-engine shape the weight cannot take would time the plain kernel again
            candidates = [c for c in (fp8_vector_candidates if fp8 else vector_candidates)
                          if not c.tma or tma_fits(layer.weight, c)]
            fused = {"fused_input": fused_input} if fused_input else {}
            m1 = least_times(timer, layer.weight, 1, ["cublas", *candidates], **scale, **fused)
            best = min(candidates, key=lambda c: m1[c], default=None)
            forced = MIN_SPEEDUP_VECTOR in (0.0, float("inf"))
            bar = MIN_SPEEDUP_VECTOR_FUSED_INPUT if fused_input and not forced else MIN_SPEEDUP_VECTOR
            vector = best if best is not None and m1["cublas"] > bar * m1[best] else None  # a tie: cuBLAS
            skinny = 0
            if not fp8:
                m16 = least_times(timer, layer.weight, MAX_M, ["cublas", "skinny"])
                skinny = MAX_M if m16["cublas"] >= MIN_SPEEDUP * m16["skinny"] else 0
            chosen[key] = Route(vector, skinny, m1_us={kind_name(k): round(us, 2) for k, us in m1.items()})
        layer.vector_config = chosen[key].vector
        layer.skinny_max_m = chosen[key].skinny_max_m
    return chosen


def least_times(timer, weight: torch.Tensor, m: int, kinds: list, rounds: int = 3, **timer_args) -> dict:
    """{kind: µs}, each the least of `rounds` timings taken in turn: interference and clock changes
    only ever add time, and taking turns spreads any drift over all kinds. A kernel of ours that
    fails to build or run here times as infinitely slow, with a warning (cuBLAS failing is an error)."""
    best = {kind: float("inf") for kind in kinds}
    failed = set()
    for _ in range(rounds):
        for kind in kinds:
            if kind in failed:
                continue
            try:
                best[kind] = min(best[kind], timer(kind, weight, m, **timer_args))
            except Exception:
                if kind == "cublas":
                    raise
                logger.warning("matmul %s fails for weight %s; not used", kind, tuple(weight.shape), exc_info=True)
                failed.add(kind)
                best[kind] = float("inf")
    return best


def spin_up(weight: torch.Tensor, seconds: float = 0.3) -> None:
    """Keep the GPU busy until its clocks settle before timing. On an H100, start-up once gave qkv
    (the first shape timed) to our kernel, which a later measurement of the same shapes showed 20%
    slower than cuBLAS there; batch-1 decode ran at 151.5 tok/s against 155.9 in an earlier run.
    Most likely the idle GPU's clocks had not settled. Timings now also take the least of 3 rounds."""
    dtype = weight.dtype if weight.element_size() > 1 else torch.bfloat16  # an fp8 weight: its model's dtype
    a = torch.randn(4096, 4096, dtype=dtype, device=weight.device)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize(weight.device)
