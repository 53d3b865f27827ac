"""fp8 weights (quantization="fp8"): the quantisers, the scaled product, the vector kernel reading
fp8 rows (under TRITON_INTERPRET=1), and the engine option end to end on the CPU.

Triton's CPU interpreter rounds float -> fp8 wrongly when the mantissa carries, so the kernels round
in float32 first under the interpreter (runtime/triton_interpreter.py); that rounding is checked here
against torch's cast, and the kernels' results then compare tightly."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from runtime.triton_interpreter import round_to_fp8  # noqa: E402
from runtime.model import fp8  # noqa: E402
from runtime.model.layers import GatedMLP, Linear, RMSNorm, _torch_rms_norm, norm_then_linear  # noqa: E402
from runtime.model.matvec import VectorConfig, vector_matmul  # noqa: E402

SMALL = VectorConfig(block_n=8, block_k=32)
SMALL_TMA = VectorConfig(block_n=8, block_k=32, num_stages=4, tma=True)  # e4m3 rows through the copy engine


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.reshape(-1, 1)


def test_weight_scales_are_per_row_and_reconstruct_within_e4m3_precision():
    w = _rand(24, 80, seed=1)
    w[3] *= 100.0  # an outlier row must not cost the other rows their precision
    w[5] = 0.0  # an all-zero row: a finite scale, zeros back
    q, scale = fp8.quantize_weight(w)
    assert q.dtype == fp8.FP8 and scale.shape == (1, 24) and scale.dtype == torch.float32
    torch.testing.assert_close(scale[0, 3], w[3].abs().max() / fp8.FP8_MAX)
    assert float(q.float().abs().amax(dim=1)[3]) == fp8.FP8_MAX  # each row's largest value maps to 448
    back = _dequantized(q, scale)
    assert torch.equal(back[5], torch.zeros(80))
    # e4m3 keeps 3 mantissa bits: each value within 1/16 of itself, or of the scale near zero
    assert bool(((back - w).abs() <= w.abs() / 16 + scale.reshape(-1, 1) * 2**-9).all())


def test_row_quantiser_kernel_matches_torch_on_exact_rows():
    # rows = representable e4m3 values × a per-row scale, with ±448 in each row: the kernel must find
    # the same scale and reproduce the same bytes (no rounding involved)
    codes = torch.arange(0, 256, dtype=torch.uint8).view(fp8.FP8).float()
    codes = codes[torch.isfinite(codes)]
    picks = torch.randint(0, codes.numel(), (3, 5000), generator=torch.Generator().manual_seed(2))
    values = codes[picks]
    values[:, 7] = fp8.FP8_MAX
    values[1, 9] = -fp8.FP8_MAX
    row_scale = torch.tensor([[0.01], [3.0], [1e-3]])
    x = values * row_scale
    out = torch.empty(3, 5000, dtype=fp8.FP8)
    scale = torch.empty(3, 1)
    fp8._quantize_rows_kernel[(3,)](x, out, scale, 5000, x.stride(0), out.stride(0), fp8.MIN_SCALE,
                                    FP8_MAX=fp8.FP8_MAX, BLOCK=1024, PDL=False, EXACT=False, MANT_BITS=3, MIN_EXP=-6,
                                    SILU_MUL=False, EXACT_BF16=False)
    want_q, want_scale = fp8.quantize_rows(x)  # the CPU path
    torch.testing.assert_close(scale, want_scale)
    torch.testing.assert_close(scale, row_scale, rtol=1e-6, atol=0)
    assert torch.equal(out.float(), want_q.float())


@pytest.mark.parametrize("dtype, mant_bits, min_exp", [(torch.float8_e4m3fn, 3, -6), (torch.float8_e5m2, 2, -14)])
def test_interpreter_rounding_matches_torch_cast(dtype, mant_bits, min_exp):
    @triton.jit
    def kernel(x_ptr, out_ptr, n, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        tl.store(out_ptr + offs, round_to_fp8(x, True, MANT_BITS, MIN_EXP), mask=offs < n)

    limit = torch.finfo(dtype).max
    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(20000, generator=gen) * s for s in (1e-4, 0.01, 1.0, 30.0)])
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1.99, 1.9375, -1.96875, 2**-10, 3 * 2**-11, limit, -limit])])
    x = x.clamp(-limit, limit)
    out = torch.empty_like(x)
    kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), MANT_BITS=mant_bits, MIN_EXP=min_exp, BLOCK=1024)
    assert torch.equal(out, x.to(dtype).float())  # round to nearest, ties to even, subnormals too


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_silu_mul_quantiser_takes_the_operands_silu_and_mul_then_quantising_gives(dtype):
    """One kernel for the fp8 down projection's input: silu(gate) * up rounded as silu_and_mul
    rounds it (to the model dtype, twice), then the row quantiser, without the product in memory.
    The reference does the arithmetic the interpreter does (numpy float32 exp), in torch."""
    import numpy as np

    gate_up = (_rand(4, 2 * 2500, seed=21) * torch.tensor([[0.3], [2.0], [9.0], [0.0]])).to(dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    g = gate.numpy()
    act = torch.from_numpy(g / (np.float32(1.0) + np.exp(-g))).to(dtype).float()
    product = (act * up).to(dtype)
    want_q, want_scale = fp8.quantize_rows(product)
    q, scale = fp8.silu_mul_quantize_rows(gate_up)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))


def test_fp8_mlp_takes_the_fused_input_on_a_triton_device(monkeypatch):
    """GatedMLP.down on fp8 weights hands the product the fused kernel's rows where the fused
    kernels run (faked here on the CPU), and the result is the unfused path's."""
    from runtime.model import layers

    mlp = GatedMLP(32, 48)
    for p in mlp.parameters():
        p.data = _rand(*p.shape, seed=p.numel()).to(torch.bfloat16) * 0.2
    fp8.quantize_model(mlp)
    gate_up = _rand(3, 96, seed=5).to(torch.bfloat16)
    unfused = mlp.down(gate_up)
    calls = []
    real = fp8.silu_mul_quantize_rows
    monkeypatch.setattr(layers, "fused_kernels", lambda x: fp8)  # anything not None: "the kernels run"
    monkeypatch.setattr(layers, "_FP8_INPUT_STATE", {"checked": True, "ok": True})
    monkeypatch.setattr(fp8, "silu_mul_quantize_rows", lambda x: calls.append(x.shape) or real(x))
    fused = mlp.down(gate_up)
    assert calls == [(3, 96)]
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0)


@pytest.mark.parametrize("with_residual", [True, False])
def test_norm_quantiser_is_the_norm_kernel_then_the_row_quantiser(with_residual):
    """An fp8 projection's input after a norm, in the norm's kernel: the same e4m3 rows and scales
    as the norm kernel's output quantised, and the same residual stream. In float16: the interpreter
    adds bfloat16 tensors wrongly (the GPU test covers bfloat16)."""
    from runtime.model import fused

    x = _rand(5, 300, seed=31).to(torch.float16) * 2
    residual = _rand(5, 300, seed=32).to(torch.float16) if with_residual else None
    weight = (_rand(300, seed=33) * 0.5 + 1).to(torch.float16)
    if with_residual:
        normed, want_residual = fused.rms_norm(x, weight, 1e-5, residual=residual)
    else:
        normed, want_residual = fused.rms_norm(x, weight, 1e-5), x
    want_q, want_scale = fp8.quantize_rows(normed)
    q, scale, stream = fused.rms_norm_fp8(x, weight, 1e-5, residual)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(stream, want_residual)


def test_fp8_projection_after_a_norm_takes_the_norm_kernels_rows(monkeypatch):
    """norm_then_linear on an fp8 layer where the fused kernels run (here under the interpreter)
    hands the product the norm kernel's e4m3 rows: near the plain path's result."""
    from runtime.model import fused, layers

    dtype = torch.float16  # see the test above
    norm, linear = RMSNorm(64, 1e-5), Linear(64, 48)
    norm.weight.data = (_rand(64, seed=1) * 0.3 + 1).to(dtype)
    linear.weight.data = (_rand(48, 64, seed=2) * 0.1).to(dtype)
    fp8.quantize_model(torch.nn.Sequential(linear))
    x, residual = _rand(4, 64, seed=3).to(dtype), _rand(4, 64, seed=4).to(dtype)
    plain, plain_stream = norm_then_linear(norm, linear, x, residual)
    calls, real = [], fused.rms_norm_fp8
    monkeypatch.setattr(layers, "fused_kernels", lambda t: fused)
    monkeypatch.setattr(layers, "_FP8_INPUT_STATE", {"checked": True, "ok": True})
    monkeypatch.setattr(fused, "rms_norm_fp8", lambda *a: calls.append(tuple(a[0].shape)) or real(*a))
    y, stream = norm_then_linear(norm, linear, x, residual)
    assert calls == [(4, 64)]
    assert torch.equal(stream, plain_stream)
    torch.testing.assert_close(y.float(), plain.float(), rtol=0.05, atol=0.05)


def test_fused_fp8_inputs_are_checked_once_and_switched_off_when_they_disagree(monkeypatch):
    """The kernels that round an fp8 projection's input themselves are used only after a check
    against the two-kernel path (run here under the interpreter, in float16); a failing check
    keeps the two-kernel path and the product is unchanged."""
    from runtime.model import fused, layers

    monkeypatch.setattr(layers, "fused_kernels", lambda t: fused)
    monkeypatch.setattr(layers, "_FP8_INPUT_STATE", {"checked": False, "ok": False})
    x = torch.zeros(2, 8, dtype=torch.float16)
    assert layers.fp8_input_kernels(x) is fused and layers._FP8_INPUT_STATE == {"checked": True, "ok": True}

    monkeypatch.setattr(layers, "_FP8_INPUT_STATE", {"checked": False, "ok": False})
    monkeypatch.setattr(fp8, "silu_mul_quantize_rows", lambda g: (torch.zeros(g.shape[0], g.shape[1] // 2, dtype=fp8.FP8),
                                                                  torch.ones(g.shape[0], 1)))
    assert layers.fp8_input_kernels(x) is None and layers._FP8_INPUT_STATE["checked"]
    mlp = GatedMLP(32, 48)
    for p in mlp.parameters():
        p.data = _rand(*p.shape, seed=p.numel()).to(torch.float16) * 0.2
    fp8.quantize_model(mlp)
    gate_up = _rand(3, 96, seed=5).to(torch.float16)
    monkeypatch.setattr(layers, "fused_kernels", lambda t: None)
    want = mlp.down(gate_up)
    monkeypatch.setattr(layers, "fused_kernels", lambda t: fused)
    assert torch.equal(mlp.down(gate_up), want)  # the broken kernel is not used


def test_quantiser_kernel_matches_torch_on_random_rows():
    x = _rand(5, 3000, seed=12) * torch.tensor([[1e-3], [1.0], [50.0], [0.0], [7.0]])
    out = torch.empty(5, 3000, dtype=fp8.FP8)
    scale = torch.empty(5, 1)
    fp8._quantize_rows_kernel[(5,)](x, out, scale, 3000, x.stride(0), out.stride(0), fp8.MIN_SCALE,
                                    FP8_MAX=fp8.FP8_MAX, BLOCK=1024, PDL=False, EXACT=True, MANT_BITS=3, MIN_EXP=-6,
                                    SILU_MUL=False, EXACT_BF16=False)
    want_q, want_scale = fp8.quantize_rows(x)  # the CPU path
    assert torch.equal(scale, want_scale)
    assert torch.equal(out.view(torch.uint8), want_q.view(torch.uint8))


def test_zero_rows_get_a_finite_scale():
    q, scale = fp8.quantize_rows(torch.zeros(2, 16))
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert torch.equal(q.float(), torch.zeros(2, 16))


def test_scaled_product_equals_the_product_of_the_dequantized_operands():
    w, x = _rand(48, 64, seed=3), _rand(5, 64, seed=4).bfloat16()
    wq, ws = fp8.quantize_weight(w)
    xq, xs = fp8.quantize_rows(x)
    want = _dequantized(xq, xs) @ _dequantized(wq, ws).t()
    got = fp8.fp8_linear(x, wq, ws)
    assert got.dtype == torch.bfloat16 and got.shape == (5, 48)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)  # bf16 output rounding
    # and against the exact product: the quantisation error e4m3 allows, not more
    exact = x.float() @ w.t()
    assert float((got.float() - exact).norm() / exact.norm()) < 0.08
    assert fp8.fp8_linear(x[:0], wq, ws).shape == (0, 48)


def _exact_row(k: int, seed: int) -> torch.Tensor:
    """A row of e4m3-representable values × 0.01 with 448 × 0.01 in it: quantising it rounds nothing."""
    codes = torch.arange(0, 256, dtype=torch.uint8).view(fp8.FP8).float()
    codes = codes[torch.isfinite(codes)]
    row = codes[torch.randint(0, codes.numel(), (1, k), generator=torch.Generator().manual_seed(seed))]
    row[0, 3] = fp8.FP8_MAX
    return row * 0.01


def _quantized_product(x: torch.Tensor, w_deq: torch.Tensor) -> torch.Tensor:
    xq, xs = fp8.quantize_rows(x)
    return (xq.float() * xs) @ w_deq.t()


@pytest.mark.parametrize("config", [SMALL, SMALL_TMA], ids=["loads", "tma"])
def test_vector_kernel_on_fp8_weights_takes_the_same_operands_as_scaled_mm(config):
    # plain input on an exactly representable row: no rounding anywhere but the float32 sums
    k = 64
    wq, ws = fp8.quantize_weight(_rand(40, k, seed=5))
    w_deq = _dequantized(wq, ws)
    x = _exact_row(k, seed=6)
    got = vector_matmul(x, wq, config, weight_scale=ws)
    assert got.dtype == x.dtype
    torch.testing.assert_close(got, _quantized_product(x, w_deq), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one weight scale per row"):
        vector_matmul(x, wq, SMALL, weight_scale=ws[:, :3])
    with pytest.raises(ValueError, match="together with its weight_scale"):
        vector_matmul(x, wq, SMALL)  # the codes alone would be read as values
    with pytest.raises(ValueError, match="together with its weight_scale"):
        vector_matmul(x, w_deq, SMALL, weight_scale=ws)


@pytest.mark.parametrize("config", [SMALL, SMALL_TMA], ids=["loads", "tma"])
@pytest.mark.parametrize("mode", ["silu_mul", "norm"])
def test_vector_kernel_on_fp8_weights_quantises_its_fused_input(mode, config):
    k = 64
    wq, ws = fp8.quantize_weight(_rand(40, k, seed=5))
    w_deq = _dequantized(wq, ws)
    if mode == "silu_mul":
        x = _rand(1, 2 * k, seed=7)
        got = vector_matmul(x, wq, config, silu_mul=True, weight_scale=ws)
        f_x = F.silu(x[:, :k]) * x[:, k:]
    else:
        x, res, norm_w = _rand(1, k, seed=8), _rand(1, k, seed=9), _rand(k, seed=10)
        got, stream = vector_matmul(x, wq, config, norm_weight=norm_w, eps=1e-5, residual=res, weight_scale=ws)
        f_x = _torch_rms_norm(x + res, norm_w, 1e-5)
        torch.testing.assert_close(stream, x + res)
    want = _quantized_product(f_x, w_deq)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # the same fp8 operands
    assert float((got - f_x @ w_deq.t()).norm() / want.norm()) < 0.08  # e4m3's own error on x


def _fp8_module(module: torch.nn.Module) -> torch.nn.Module:
    layers = fp8.quantize_model(module)
    assert layers > 0
    for layer in module.modules():
        if isinstance(layer, Linear):
            assert layer.weight.dtype == fp8.FP8 and layer.weight_scale is not None
    return module


def test_model_layers_route_one_row_to_the_vector_kernel_and_more_rows_to_scaled_mm():
    torch.manual_seed(0)
    mlp = GatedMLP(32, 48)
    for p in mlp.parameters():
        p.data.normal_(0, 0.1)
    x = _rand(3, 32, seed=11)
    ref = {name: _dequantized(*fp8.quantize_weight(p.data)) for name, p in mlp.named_parameters()}
    _fp8_module(mlp)
    gate_up = x @ ref["gate_up_proj.weight"].t()
    want = (F.silu(gate_up[:, :48]) * gate_up[:, 48:]) @ ref["down_proj.weight"].t()
    # three rows: per-row activation quantisation + scaled matmul (lossy, so loosely)
    rows = mlp(x)
    assert float((rows - want).norm() / want.norm()) < 0.1
    # one row on the vector kernel takes the same fp8 operands as the scaled matmul of that row
    for layer in mlp.modules():
        if isinstance(layer, Linear):
            layer.vector_config = SMALL
    one = mlp(x[:1])
    torch.testing.assert_close(one, rows[:1], atol=1e-5, rtol=1e-5)  # the same operands, other sum order

    norm, linear = RMSNorm(32, 1e-5).requires_grad_(False), Linear(32, 16)
    norm.weight.data.fill_(1.0)
    linear.weight.data.normal_(0, 0.1)
    w_deq = _dequantized(*fp8.quantize_weight(linear.weight.data))
    _fp8_module(linear)
    linear.vector_config = SMALL
    y, stream = norm_then_linear(norm, linear, x[:1], x[1:2])
    want = _quantized_product(_torch_rms_norm(x[:1] + x[1:2], norm.weight, 1e-5), w_deq)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_lm_head_stays_in_the_model_dtype(tmp_path):
    from runtime.model.loader import load_model
    from runtime.model.tiny import build_tiny_model

    model, _ = load_model(build_tiny_model(str(tmp_path)), dtype="bfloat16")
    layers = fp8.quantize_model(model)
    assert layers == 2 * 2 * model.config.num_layers  # qkv, o, gate_up, down per layer
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.lm_head.weight_scale is None
    assert fp8.quantize_model(model) == 0  # idempotent


def test_layers_scaled_mm_cannot_take_stay_in_the_model_dtype():
    model = torch.nn.Sequential(Linear(20, 32), Linear(32, 48))  # 20 is not a multiple of 16
    assert fp8.quantize_model(model) == 1
    assert model[0].weight.dtype == torch.float32 and model[0].weight_scale is None
    assert model[1].weight.dtype == fp8.FP8


def test_start_up_choice_times_fp8_weights_with_their_scales_and_never_the_skinny_kernel():
    from runtime.model.matmul_choice import Route, choose_matmul_routes

    model = torch.nn.Sequential(Linear(32, 16), Linear(32, 16))
    for layer in model:
        layer.weight.data.normal_()
    fp8.quantize_model(model)
    timed = []

    def timer(kind, weight, m, weight_scale=None):
        assert weight.dtype == fp8.FP8 and weight_scale is not None
        timed.append((kind, m))
        return {"cublas": 2.0, SMALL: 1.0}[kind]

    chosen = choose_matmul_routes(model, timer=timer, eligible=lambda layer: True, fp8_vector_candidates=(SMALL,))
    assert chosen == {(16, 32, "fp8"): Route(SMALL, 0)}
    assert {m for _, m in timed} == {1} and "skinny" not in {k for k, _ in timed}
    assert all(layer.vector_config == SMALL and layer.skinny_max_m == 0 for layer in model)
