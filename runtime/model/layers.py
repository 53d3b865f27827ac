"""Building blocks of Llama-family models in plain torch; on a GPU the elementwise ones run as fused
Triton kernels (runtime/model/fused.py) with the same rounding.

Parameters are allocated with `torch.empty` and never initialised here: the loader builds the model
directly on its device in its dtype and then fills every parameter (from a checkpoint, or randomly for
`load_format="dummy"`), so an 8B model costs no throw-away CPU initialisation.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


_FUSED_STATE = {"checked": False, "ok": False}


def fused_kernels(x: torch.Tensor):
    """The Triton module for tensors on a GPU, else None (the plain torch code below runs).
    The kernels are checked against the torch code once per process before first use; any error or
    mismatch switches them off (with a warning) rather than serving wrong numbers."""
    if not x.is_cuda:
        return None
    if not _FUSED_STATE["checked"]:
        _FUSED_STATE["checked"] = True
        _FUSED_STATE["ok"] = _self_check(x.device)
    if not _FUSED_STATE["ok"]:
        return None
    from runtime.model import fused

    return fused


def _self_check(device: torch.device) -> bool:
    import logging
    import os

    if os.environ.get("SGFLOW_DISABLE_FUSED") == "1":
        return False
    try:
        from runtime.model import fused

        gen = torch.Generator(device=device).manual_seed(0)
        x, r, w = (torch.randn(3, 256, device=device, generator=gen) for _ in range(3))
        normed, summed = fused.rms_norm(x, w[0], 1e-5, residual=r)
        ok = torch.allclose(summed, x + r) and torch.allclose(normed, _torch_rms_norm(x + r, w[0], 1e-5), atol=1e-5)
        gate_up = torch.randn(2, 512, device=device, generator=gen)
        ok = ok and torch.allclose(fused.silu_and_mul(gate_up), F.silu(gate_up[:, :256]) * gate_up[:, 256:], atol=1e-5)
        q = torch.randn(2, 4, 64, device=device, generator=gen)
        cos, sin = torch.rand(2, 32, device=device, generator=gen), torch.rand(2, 32, device=device, generator=gen)
        want = torch.cat((q[..., :32] * cos[:, None] - q[..., 32:] * sin[:, None],
                          q[..., 32:] * cos[:, None] + q[..., :32] * sin[:, None]), dim=-1)
        ok = ok and torch.allclose(fused.rotary_(q.clone(), cos, sin), want, atol=1e-5)
    except Exception:  # no triton, or a kernel that does not build here: stay on torch
        logging.getLogger(__name__).warning("fused kernels unavailable; using torch", exc_info=True)
        return False
    if not ok:
        logging.getLogger(__name__).warning("fused kernels disagree with torch; using torch")
    return bool(ok)


_FP8_INPUT_STATE = {"checked": False, "ok": False}


def fp8_input_kernels(x: torch.Tensor):
    """The Triton module where its kernels that round an fp8 projection's input themselves
    (`rms_norm_fp8`, fp8.silu_mul_quantize_rows) may run, else None (the norm or silu·mul kernel,
    then the row quantiser). They must give those two kernels' bytes exactly: checked once per process
    on first use, like fused_kernels, and switched off with a warning if they do not."""
    fused = fused_kernels(x)
    if fused is None:
        return None
    if not _FP8_INPUT_STATE["checked"]:
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return None  # a check syncs with the host: not inside a CUDA-graph capture (the plain path is exact too)
        _FP8_INPUT_STATE["checked"] = True
        _FP8_INPUT_STATE["ok"] = _fp8_input_check(x.device, x.dtype)
    return fused if _FP8_INPUT_STATE["ok"] else None


def _fp8_input_check(device: torch.device, dtype: torch.dtype) -> bool:
    import logging

    from runtime.model import fp8, fused

    try:
        gen = torch.Generator(device=device).manual_seed(0)
        x, r, gate_up = (torch.randn(3, n, device=device, generator=gen).to(dtype) for n in (256, 256, 512))
        w = (torch.rand(256, device=device, generator=gen) + 0.5).to(dtype)
        q, scale, summed = fused.rms_norm_fp8(x, w, 1e-5, r)
        want_q, want_scale = fp8.quantize_rows(fused.rms_norm(x, w, 1e-5, residual=r)[0])
        ok = torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale, want_scale)
        q, scale = fp8.silu_mul_quantize_rows(gate_up)
        want_q, want_scale = fp8.quantize_rows(fused.silu_and_mul(gate_up))
        ok = ok and torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(scale, want_scale)
    except Exception:  # a kernel that does not build here: the two-kernel path
        logging.getLogger(__name__).warning("fused fp8 input kernels unavailable; using the two-kernel path",
                                            exc_info=True)
        return False
    if not ok:
        logging.getLogger(__name__).warning("fused fp8 input kernels disagree with the two-kernel path; not using them")
    return bool(ok)


def _torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x_float = x.float()
    return weight * (x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm exactly: normalise in float32, cast back to x's dtype, then scale by weight."""
    fused = fused_kernels(x)
    if fused is not None:
        return fused.rms_norm(x.reshape(-1, x.shape[-1]), weight, eps).view(x.shape)
    x_float = x.float()
    variance = x_float.pow(2).mean(-1, keepdim=True)
    return weight * (x_float * torch.rsqrt(variance + eps)).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm step between sublayers: new_residual = x + residual (in the model dtype, as HF
    adds), returns (rms_norm(new_residual), new_residual). One call so a fused kernel can take over."""
    fused = fused_kernels(x)
    if fused is not None and x.dim() == 2:
        return fused.rms_norm(x, weight, eps, residual=residual)
    new_residual = x + residual
    return rms_norm(new_residual, weight, eps), new_residual


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate columns first) → silu(gate) * up [T, I], rounded as HF's MLP rounds."""
    fused = fused_kernels(gate_up)
    if fused is not None:
        return fused.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# What a projection's input comes from, where the vector kernel computes it itself (matvec.py) while
# cuBLAS needs it as a kernel of its own: start-up timing (matmul_choice.py) charges that to cuBLAS.
NORM_INPUT = "rms_norm"  # (residual add +) RMSNorm, through norm_then_linear
SILU_MUL_INPUT = "silu_mul"  # silu(gate) * up, through GatedMLP.down


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def forward_with_residual(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(x, residual, self.weight, self.eps)


class Linear(nn.Module):
    """y = x @ weight.T (+ bias); weight [output_size, input_size], HF's layout.

    Decode batches may go to our Triton kernels instead of cuBLAS (gemv.py): one row to the vector
    kernel when `vector_config` is set, 2..`skinny_max_m` rows to the skinny matmul. Both are off
    unless the start-up measurement found them faster for this shape (matmul_choice.py).

    With `quantization="fp8"` the weight is e4m3 and `weight_scale` [1, output_size] holds its
    per-row scales (fp8.py); every product then runs in fp8: torch._scaled_mm, or for one row the
    vector kernel, which rounds its input to e4m3 the same way."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size))
        self.bias = nn.Parameter(torch.empty(output_size)) if bias else None
        self.register_buffer("weight_scale", None)  # set by fp8.quantize_model
        self.fused_input: Optional[str] = None  # NORM_INPUT / SILU_MUL_INPUT: set by the block that feeds it
        self.vector_config = None
        self.skinny_max_m = 0
        self.batch_invariant = False  # deterministic inference: every product on invariant_matmul.py

    def takes_one_row(self, x: torch.Tensor) -> bool:
        """Whether x goes to the vector kernel, which can also fuse the op before it (matvec.py)."""
        return (x.shape[0] == 1 and self.vector_config is not None and not self.batch_invariant and x.dim() == 2
                and x.stride(-1) == 1)

    def forward_silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """self(silu(gate) * up) for [1, 2 * input_size] gate|up, in one kernel (takes_one_row only)."""
        from runtime.model.matvec import vector_matmul

        return self.add_bias(vector_matmul(gate_up, self.weight, self.vector_config, silu_mul=True,
                                           weight_scale=self.weight_scale))

    def forward_fp8_rows(self, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """self(x) for an fp8 layer, given x already rounded to e4m3 rows [M, K] with [M, 1] scales."""
        from runtime.model.fp8 import scaled_product

        if xq.shape[0] == 0:
            return torch.empty(0, self.output_size, dtype=out_dtype, device=xq.device)
        return self.add_bias(scaled_product(xq, x_scale, self.weight, self.weight_scale, out_dtype))

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_invariant:
            from runtime.model.invariant_matmul import invariant_matmul

            assert self.weight_scale is None, "the batch-invariant product takes unquantized weights"
            y = invariant_matmul(x.reshape(-1, self.input_size), self.weight, self.bias)
            return y.view(*x.shape[:-1], self.output_size)
        if self.takes_one_row(x):
            from runtime.model.matvec import vector_matmul

            return self.add_bias(vector_matmul(x, self.weight, self.vector_config, weight_scale=self.weight_scale))
        if self.weight_scale is not None:
            from runtime.model.fp8 import fp8_linear

            return self.add_bias(fp8_linear(x.reshape(-1, x.shape[-1]), self.weight, self.weight_scale)).view(
                *x.shape[:-1], self.output_size)
        if 1 < x.shape[0] <= self.skinny_max_m and x.dim() == 2 and x.stride(1) == 1:
            from runtime.model.gemv import skinny_matmul

            return self.add_bias(skinny_matmul(x, self.weight))
        return F.linear(x, self.weight, self.bias)


def norm_then_linear(
    norm: RMSNorm, linear: Linear, x: torch.Tensor, residual: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm in front of a projection: (linear(norm(x + residual)), x + residual), or without a
    residual (the first layer) (linear(norm(x)), x). One kernel where the vector kernel takes x; for
    fp8 layers on the GPU the norm's kernel also rounds the rows to e4m3."""
    if linear.takes_one_row(x) and (residual is None or residual.stride(-1) == 1):
        from runtime.model.matvec import vector_matmul

        y, residual = vector_matmul(x, linear.weight, linear.vector_config, norm_weight=norm.weight, eps=norm.eps,
                                    residual=residual, weight_scale=linear.weight_scale)
        return linear.add_bias(y), residual
    rows_ok = x.dim() == 2 and x.stride(-1) == 1 and (residual is None or residual.stride(-1) == 1)
    fused = fp8_input_kernels(x) if linear.weight_scale is not None and rows_ok else None
    if fused is not None:  # fp8: the norm's kernel rounds its rows to e4m3 for the product itself
        xq, x_scale, residual = fused.rms_norm_fp8(x, norm.weight, norm.eps, residual)
        return linear.forward_fp8_rows(xq, x_scale, x.dtype), residual
    if residual is None:
        return linear(norm(x)), x
    normed, residual = norm.forward_with_residual(x, residual)
    return linear(normed), residual


class MergedLinear(Linear):
    """Several checkpoint linears sharing one input, stacked along the output dimension so they run as
    one matmul. `output_sizes` maps each checkpoint name (e.g. "q_proj") to its rows, in order; the
    loader finds the checkpoint tensor `<parent>.<name>.weight` and copies it into its rows."""

    def __init__(self, input_size: int, output_sizes: dict[str, int], bias: bool = False):
        super().__init__(input_size, sum(output_sizes.values()), bias)
        self.output_sizes = dict(output_sizes)

    @property
    def shard_names(self) -> tuple[str, ...]:
        return tuple(self.output_sizes)

    def shard_range(self, shard_name: str) -> tuple[int, int]:
        """(first row, number of rows) of one checkpoint linear inside the merged weight/bias."""
        start = 0
        for name, size in self.output_sizes.items():
            if name == shard_name:
                return start, size
            start += size
        raise KeyError(f"{shard_name!r} is not one of {self.shard_names}")

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Undo the stacking on an output y [..., output_size] → one view per shard."""
        return y.split(list(self.output_sizes.values()), dim=-1)


class Embedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up as one merged matmul; where start-up timing chose
    it for the batch's size (`gated_route`, gated_choice.py), silu·mul runs inside that matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = MergedLinear(hidden_size, {"gate_proj": intermediate_size, "up_proj": intermediate_size})
        self.down_proj = Linear(intermediate_size, hidden_size)
        self.down_proj.fused_input = SILU_MUL_INPUT
        self.gated_route = None  # a gated_choice.GatedRoute: set at start-up on GPUs where it may win

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config = self._gated_config(x)
        if config is not None:
            return self.down_proj(self._gated(x, config))
        return self.down(self.gate_up_proj(x))

    def forward_after_norm(self, norm: RMSNorm, x: torch.Tensor, residual: Optional[torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP sublayer from its pre-norm: (self(norm(x + residual)), x + residual), or without a
        residual (self(norm(x)), x), with the norm fused where the projection after it can take it."""
        config = self._gated_config(x)
        if config is None:
            gate_up, residual = norm_then_linear(norm, self.gate_up_proj, x, residual)
            return self.down(gate_up), residual
        if residual is None:
            normed, residual = norm(x), x
        else:
            normed, residual = norm.forward_with_residual(x, residual)
        return self.down_proj(self._gated(normed, config)), residual

    def _gated_config(self, x: torch.Tensor):
        route = self.gated_route
        return route.config_for(x.shape[0]) if route is not None and x.dim() == 2 else None

    def _gated(self, x: torch.Tensor, config) -> torch.Tensor:
        from runtime.model.gated_matmul import silu_mul_matmul

        return silu_mul_matmul(x, self.gate_up_proj.weight, config)

    def down(self, gate_up: torch.Tensor) -> torch.Tensor:
        """down(silu(gate) * up) from the gate_up projection's output [T, 2I]."""
        return linear_after_silu_mul(self.down_proj, gate_up)


def linear_after_silu_mul(linear: Linear, gate_up: torch.Tensor) -> torch.Tensor:
    """linear(silu(gate) * up) from gate_up [T, 2I]: silu·mul inside the vector kernel for one row, or
    inside the rounding of an fp8 layer's rows, else its own kernel first."""
    if linear.takes_one_row(gate_up):
        return linear.forward_silu_mul(gate_up)
    fp8_rows = gate_up.dim() == 2 and gate_up.stride(-1) == 1 and linear.weight_scale is not None
    if fp8_rows and fp8_input_kernels(gate_up) is not None:
        from runtime.model.fp8 import silu_mul_quantize_rows

        return linear.forward_fp8_rows(*silu_mul_quantize_rows(gate_up), gate_up.dtype)
    return linear(silu_and_mul(gate_up))
