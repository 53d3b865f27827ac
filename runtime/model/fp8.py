"""fp8 weights (W8A8, e4m3): `quantization="fp8"` halves the bytes of every matmul except the LM
head's. On an H200, prefill-sized products ran 1.5-1.7x faster than bf16, those at M = 320
1.0-1.14x. Checkpoints saved with fp8 weights load into the same layers (loader.py; the formats
are listed in config.py).

Each weight is quantised once, after loading, with one scale per output channel (its row). Each
input is quantised as it arrives, with one scale per row (per token), by a one-pass Triton kernel on
the GPU. torch._scaled_mm multiplies the two in fp8 and applies both scales in its epilogue:

    y[m, n] = (sum_k xq[m, k] * wq[n, k]) * x_scale[m] * w_scale[n]

Inputs are scaled by multiplying with the reciprocal of their scale (one division per row, not per
value); the vector kernel (matvec.py) rounds its row the same way.

Per-row and per-channel scales keep one outlier token or channel from flattening everyone else's
precision, which a single scale per tensor would. The scales are amax / 448 (e4m3's largest value).
This is lossy: benchmarks/RESULTS.md reports the logprob error next to bf16's.

quantization="fp8" keeps the LM head in the model dtype: its logits feed sampling directly, and it is
a small share of the compute. Embeddings and norms are not matmuls and stay too. A checkpoint that
stores its LM head in fp8 is served as stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from runtime import pdl
from runtime.pdl import enter_small_kernel
from runtime.triton_interpreter import E4M3, exact_bf16, exact_rounding, round_to_bf16, round_to_fp8

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
MIN_SCALE = 1e-12  # an all-zero row gets this scale, not 0 (which would divide by zero)


def check_supported(device: torch.device) -> None:
    """ValueError naming the option where fp8 matmuls cannot run: CUDA GPUs before Ada/Hopper."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"fp8 weights (quantization='fp8' or an fp8 checkpoint) need a GPU of compute capability "
                         f"8.9 or later (Ada, Hopper); {name} is {torch.cuda.get_device_capability(device)}")


def _scales(amax: torch.Tensor) -> torch.Tensor:
    """amax / FP8_MAX, correctly rounded on every device. The divisor is a tensor on amax's device
    because CUDA divides by a Python number as a multiply by its reciprocal (1/448 is inexact): scales
    then differed by an ulp from the CPU's and the kernels' div_rn, and so did a few rounded weights."""
    return (amax / torch.full_like(amax, FP8_MAX)).clamp(min=MIN_SCALE)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] → (e4m3 [N, K], float32 scale [1, N]): one scale per output channel."""
    scale = _scales(weight.abs().amax(dim=1, keepdim=True).float())
    quantized = (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return quantized, scale.reshape(1, -1).contiguous()


@triton.jit
def _row_values(x_ptr, row_start, cols, n_cols, SILU_MUL: tl.constexpr, EXACT_BF16: tl.constexpr):
    """float32 values of one row's columns `cols`: x itself, or with SILU_MUL (x = gate | up, n_cols
    each) silu(gate) * up rounded exactly as fused.silu_and_mul rounds it (to the model dtype twice)."""
    mask = cols < n_cols
    if SILU_MUL:
        gate = tl.load(x_ptr + row_start + cols, mask=mask, other=0.0)
        up = tl.load(x_ptr + row_start + n_cols + cols, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        act = round_to_bf16(g / (1.0 + tl.exp(-g)), EXACT_BF16).to(gate.dtype)
        return round_to_bf16(act.to(tl.float32) * up.to(tl.float32), EXACT_BF16).to(gate.dtype).to(tl.float32)
    return tl.load(x_ptr + row_start + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _quantize_rows_kernel(x_ptr, out_ptr, scale_ptr, n_cols, stride_x, stride_o, min_scale,
                          FP8_MAX: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
                          EXACT: tl.constexpr, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr,
                          SILU_MUL: tl.constexpr, EXACT_BF16: tl.constexpr):
    # One program per row, two sweeps: the row's amax, then the scaled cast. The second sweep reads
    # what the first just brought into L1/L2, so HBM sees the row once. The arithmetic is IEEE
    # (div_rn, a multiply by the reciprocal, a round-to-nearest-even cast), as on the torch path.
    # With SILU_MUL the row is gate | up and its values silu(gate) * up (see _row_values): the
    # down projection's input never goes to memory in the model dtype.
    enter_small_kernel(PDL)  # see runtime/pdl.py
    row = tl.program_id(0)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        x = _row_values(x_ptr, row * stride_x, start + tl.arange(0, BLOCK), n_cols, SILU_MUL, EXACT_BF16)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), FP8_MAX), min_scale)
    inverse = tl.math.div_rn(1.0, scale)
    tl.store(scale_ptr + row, scale)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = _row_values(x_ptr, row * stride_x, cols, n_cols, SILU_MUL, EXACT_BF16)
        # EXACT: see runtime/triton_interpreter.py
        q = round_to_fp8(tl.clamp(x * inverse, -FP8_MAX, FP8_MAX), EXACT, MANT_BITS, MIN_EXP)
        tl.store(out_ptr + row * stride_o + cols, q.to(out_ptr.dtype.element_ty), mask=cols < n_cols)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] → (e4m3 [M, K], float32 scale [M, 1]): one scale per row, computed from the row."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if not x.is_cuda:
        scale = _scales(x.abs().amax(dim=1, keepdim=True).float())
        return (x.float() * (1.0 / scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale
    return _launch_quantize(x, x.shape[1], silu_mul=False)


def silu_mul_quantize_rows(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows(silu_and_mul(gate_up)) in one kernel, bit for bit: gate_up [M, 2I] (gate
    columns first, unit column stride) → (e4m3 [M, I], float32 scale [M, 1]). A Triton device only
    (the GPU, or the CPU under the interpreter)."""
    assert gate_up.stride(-1) == 1 and gate_up.shape[1] % 2 == 0
    return _launch_quantize(gate_up, gate_up.shape[1] // 2, silu_mul=True)


def _launch_quantize(x: torch.Tensor, cols: int, silu_mul: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.shape[0]
    out = torch.empty((rows, cols), dtype=FP8, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        _quantize_rows_kernel[(rows,)](
            x, out, scale, cols, x.stride(0), out.stride(0), MIN_SCALE, FP8_MAX=FP8_MAX,
            BLOCK=min(4096, triton.next_power_of_2(cols)), num_warps=8 if cols >= 4096 else 4,
            EXACT=exact_rounding(), **E4M3, SILU_MUL=silu_mul, EXACT_BF16=exact_bf16(x.dtype),
            **pdl.launch_args(x.device),
        )
    return out, scale


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] (model dtype) times an fp8 weight [N, K] with its [1, N] scales → [M, N] in x's dtype."""
    if x.shape[0] == 0:
        return x.new_empty((0, weight.shape[0]))
    xq, x_scale = quantize_rows(x)
    return scaled_product(xq, x_scale, weight, weight_scale, x.dtype)


def scaled_product(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """e4m3 rows [M, K] with their [M, 1] scales times an fp8 weight [N, K] with its [1, N] scales →
    [M, N] in out_dtype."""
    if not xq.is_cuda:
        # The same product in float64, rounded once to out_dtype. CPU matmuls in float32 (and torch's
        # CPU _scaled_mm) sum a row in a different order at different M, which would make a request's
        # tokens depend on its batch; float64 sums differ far below what the final rounding keeps.
        x64 = xq.double() * x_scale.double()
        return torch.nn.functional.linear(x64, weight.double() * weight_scale.double().reshape(-1, 1)).to(out_dtype)
    return torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale, out_dtype=out_dtype)


def dequantize_blocks(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """An e4m3 weight [N, K] stored with one scale per block[0] x block[1] tile (scale
    [ceil(N / block[0]), ceil(K / block[1])], edge tiles partial) → the float32 weight."""
    rows, cols = weight.shape
    expected = (-(-rows // block[0]), -(-cols // block[1]))
    if tuple(scale.shape) != expected:
        raise ValueError(f"block scales of shape {tuple(scale.shape)} for a weight of shape {(rows, cols)} in "
                         f"{block[0]}x{block[1]} blocks: expected {expected}")
    tiles = scale.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return weight.float() * tiles


def make_fp8(linear: torch.nn.Module) -> None:
    """Give a Linear an (uninitialised) e4m3 weight and [1, N] float32 scales, for a checkpoint that
    stores them: the loader then fills both."""
    linear.weight = torch.nn.Parameter(torch.empty_like(linear.weight, dtype=FP8), requires_grad=False)
    linear.weight_scale = torch.empty(1, linear.output_size, dtype=torch.float32, device=linear.weight.device)


def quantize_model(model: torch.nn.Module) -> int:
    """Every Linear except the LM head → fp8 weight and scales, in place, one layer at a time (so the
    peak memory is the bf16 model's plus float32 temporaries of one layer). A layer whose sizes are
    not multiples of 16, which torch._scaled_mm needs, stays in the model dtype. Returns the number of
    layers quantised."""
    from runtime.model.layers import Linear

    lm_head = getattr(model, "lm_head", None)
    count = 0
    for module in model.modules():
        if isinstance(module, Linear) and module is not lm_head and module.weight.dtype != FP8:
            if module.output_size % 16 or module.input_size % 16:
                continue
            quantized, scale = quantize_weight(module.weight.data)
            module.weight = torch.nn.Parameter(quantized, requires_grad=False)
            module.weight_scale = scale
            count += 1
    return count
