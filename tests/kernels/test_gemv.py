"""The Triton skinny matmul under TRITON_INTERPRET=1 against torch, and the start-up choice that
routes a Linear to it only where it measured faster."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runtime.model.gemv import MAX_M, GemvConfig, choose_skinny_kernels, skinny_matmul  # noqa: E402
from runtime.model.layers import Linear  # noqa: E402

SMALL = GemvConfig(block_n=16, block_k=32)


@pytest.mark.parametrize("m, n, k", [(1, 40, 96), (3, 33, 64), (MAX_M, 64, 128), (2, 16, 100)])
def test_matches_torch_linear(m, n, k):
    gen = torch.Generator().manual_seed(m * n + k)
    w, x = torch.randn(n, k, generator=gen), torch.randn(m, k, generator=gen)
    torch.testing.assert_close(skinny_matmul(x, w, config=SMALL), F.linear(x, w), atol=1e-4, rtol=1e-4)


def test_silu_mul_input_matches_the_unfused_path():
    gen = torch.Generator().manual_seed(0)
    w, gate_up = torch.randn(24, 48, generator=gen), torch.randn(2, 96, generator=gen)
    want = F.linear(F.silu(gate_up[:, :48]) * gate_up[:, 48:], w)
    torch.testing.assert_close(skinny_matmul(gate_up, w, silu_mul_input=True, config=SMALL), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("x_shape, words", [((MAX_M + 1, 32), ["at most", str(MAX_M)]), ((1, 31), ["31 columns", "32"])])
def test_bad_shapes_are_refused(x_shape, words):
    with pytest.raises(ValueError) as err:
        skinny_matmul(torch.zeros(x_shape), torch.zeros(16, 32))
    assert all(w in str(err.value) for w in words)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = Linear(32, 16), Linear(32, 16), Linear(64, 16)


def test_choice_follows_the_measurement_per_shape():
    model = _Model()

    def timer(kind, weight, m):  # Triton wins on the 16x32 weight at both M; on 16x64 only at M=1
        if tuple(weight.shape) == (16, 32):
            return {"cublas": 2.0, "skinny": 1.0}[kind]
        return {"cublas": 2.0, "skinny": 1.0 if m == 1 else 3.0}[kind]

    chosen = choose_skinny_kernels(model, timer=timer, eligible=lambda w: True)
    assert chosen == {(16, 32): MAX_M, (16, 64): 1}
    assert (model.a.skinny_max_m, model.b.skinny_max_m, model.c.skinny_max_m) == (MAX_M, MAX_M, 1)


def test_a_tie_within_noise_keeps_cublas_and_float32_cpu_weights_are_never_timed():
    model = _Model()
    assert choose_skinny_kernels(model, timer=lambda kind, w, m: 1.0, eligible=lambda w: True) == {(16, 32): 0, (16, 64): 0}
    untimed = _Model()
    assert choose_skinny_kernels(untimed, timer=lambda *a: pytest.fail("timed a CPU weight")) == {}
    assert untimed.a.skinny_max_m == 0


def test_linear_routes_small_batches_through_the_skinny_kernel(monkeypatch):
    import runtime.model.gemv as gemv

    layer = Linear(32, 16, bias=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    calls = []
    real = gemv.skinny_matmul
    monkeypatch.setattr(gemv, "skinny_matmul", lambda x, w, **kw: calls.append(x.shape[0]) or real(x, w, config=SMALL))
    layer.skinny_max_m = 4
    for m in (1, 4, 5):
        x = torch.randn(m, 32)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-4)
    assert calls == [1, 4]  # 5 rows: cuBLAS
