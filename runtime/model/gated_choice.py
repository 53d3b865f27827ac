"""Which kernel runs the MLP's gated product at each batch size: cuBLAS (the gate_up product, then the
silu·mul kernel: what the model runs without this) or gated_matmul.silu_mul_matmul in one of its
launch shapes. Chosen at start-up by timing both on the model's own weight shape, on this card, at a
few batch sizes from decode batches to prefill chunks; each timed size decides for the sizes nearest
it. Batches of up to gemv.MAX_M rows stay with the decode routes of matmul_choice.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from runtime.model.gated_matmul import CANDIDATES, GatedConfig, fits, silu_mul_matmul
from runtime.model.gemv import MAX_M
from runtime.model.matmul_choice import graph_time_us, l2_overflowing_copies, least_times, spin_up

logger = logging.getLogger(__name__)

# The batch sizes timed, four apart: each decides for the sizes from half of it to twice it.
TIMED_M = (32, 128, 512, 2048, 8192)
# A win inside the timing noise is no win: cuBLAS keeps the product unless ours is this much faster.
MIN_SPEEDUP = 1.02


@dataclass(frozen=True)
class GatedRoute:
    """How one MLP runs its gated product: `steps` are (least M, launch shape or None for cuBLAS),
    ascending; below the first step, cuBLAS."""

    steps: tuple[tuple[int, GatedConfig | None], ...] = ()
    us: dict = field(default_factory=dict, compare=False, repr=False)  # {M: {kind: µs}}, what it was chosen on

    def config_for(self, m: int) -> GatedConfig | None:
        chosen = None
        for least, config in self.steps:
            if m < least:
                break
            chosen = config
        return chosen

    def __str__(self) -> str:
        return ", ".join(f"M>={least} {config or 'cublas'}" for least, config in self.steps) or "cublas"


def time_gated(kind, weight: torch.Tensor, m: int) -> float:
    """µs of one gated product of [m, K] rows with `weight` [2I, K], in a CUDA graph: `kind` "cublas"
    (F.linear, then the silu·mul kernel the model runs after it) or a GatedConfig. The graph cycles
    through enough copies of the weight to overflow L2, as in the model where every weight streams
    from HBM."""
    from runtime.model.layers import silu_and_mul

    weights = [weight.clone() for _ in range(l2_overflowing_copies(weight))]
    x = torch.randn(m, weight.shape[1], dtype=weight.dtype, device=weight.device)

    def run_all():
        for w in weights:
            if kind == "cublas":
                silu_and_mul(torch.nn.functional.linear(x, w))
            else:
                silu_mul_matmul(x, w, kind)

    return graph_time_us(run_all, reps=1) / len(weights)


def route_from_times(times: dict[int, dict], min_speedup: float | None = None) -> GatedRoute:
    """{M: {kind: µs}} (kind "cublas" or a GatedConfig) → the route taking, at each timed M, the
    fastest shape where it beats cuBLAS by `min_speedup` (default: MIN_SPEEDUP as it is at the call),
    else cuBLAS."""
    min_speedup = MIN_SPEEDUP if min_speedup is None else min_speedup
    steps = []
    for m in sorted(times):
        shapes = {k: us for k, us in times[m].items() if k != "cublas"}
        best = min(shapes, key=shapes.get, default=None)
        use = best is not None and times[m]["cublas"] > min_speedup * shapes[best]
        steps.append((max(MAX_M + 1, m // 2), best if use else None))
    us = {m: {str(k): round(v, 2) for k, v in t.items()} for m, t in times.items()}
    return GatedRoute(tuple(steps), us)


def eligible(mlp) -> bool:
    """A 16-bit gate_up weight on a GPU, without bias or fp8 scales, outside deterministic mode."""
    layer = mlp.gate_up_proj
    weight = layer.weight
    return (weight.is_cuda and weight.dtype in (torch.float16, torch.bfloat16) and layer.bias is None
            and layer.weight_scale is None and not layer.batch_invariant and weight.stride(1) == 1)


def choose_gated_routes(model: torch.nn.Module, max_m: int, timer=time_gated, candidates=None,
                        check=eligible) -> dict:
    """Time cuBLAS + silu·mul against silu_mul_matmul's launch shapes (gated_matmul.CANDIDATES by
    default) at each TIMED_M up to `max_m` (the most tokens a step runs), once per distinct gate_up
    weight shape, and set `gated_route` on every GatedMLP of that shape. Returns {(2I, K): GatedRoute}."""
    from runtime.model.layers import GatedMLP

    candidates = CANDIDATES if candidates is None else candidates
    sizes = [m for m in TIMED_M if m <= max_m] or [TIMED_M[0]]
    chosen: dict[tuple, GatedRoute] = {}
    for mlp in model.modules():
        if not isinstance(mlp, GatedMLP) or not check(mlp):
            continue
        weight = mlp.gate_up_proj.weight
        key = tuple(weight.shape)
        if key not in chosen:
            if weight.is_cuda:
                spin_up(weight)
            kinds = ["cublas", *(c for c in candidates if fits(c, weight))]
            chosen[key] = route_from_times({m: least_times(timer, weight, m, kinds) for m in sizes})
        mlp.gated_route = chosen[key]
    return chosen
