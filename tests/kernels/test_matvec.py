"""The batch-1 matrix-vector kernel under TRITON_INTERPRET=1: plain and with its fused inputs
(silu·mul, RMSNorm with and without the residual add) against the unfused torch path, and the model
code that routes a decode row through the fused forms."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runtime.model.layers import GatedMLP, Linear, RMSNorm, _torch_rms_norm, norm_then_linear  # noqa: E402
from runtime.model.matvec import VectorConfig, vector_matmul  # noqa: E402
from tests.interpreted_triton import filled_randomly  # noqa: E402

SMALL = VectorConfig(block_n=8, block_k=32)
SMALL_TMA = VectorConfig(block_n=8, block_k=32, num_stages=4, tma=True)  # W through the copy engine
CONFIGS = pytest.mark.parametrize("config", [SMALL, SMALL_TMA], ids=["loads", "tma"])


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@CONFIGS
@pytest.mark.parametrize("n, k", [(40, 96), (33, 100), (7, 20)])
def test_plain_product_matches_torch(n, k, config):
    w, x = _rand(n, k, seed=1), _rand(1, k, seed=2)
    torch.testing.assert_close(vector_matmul(x, w, config), F.linear(x, w), atol=1e-4, rtol=1e-4)


@CONFIGS
@pytest.mark.parametrize("k", [64, 70])
def test_silu_mul_input_matches_the_unfused_mlp(k, config):
    w, gate_up = _rand(24, k, seed=3), _rand(1, 2 * k, seed=4)
    want = F.linear(F.silu(gate_up[:, :k]) * gate_up[:, k:], w)
    torch.testing.assert_close(vector_matmul(gate_up, w, config, silu_mul=True), want, atol=1e-4, rtol=1e-4)


@CONFIGS
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("k", [96, 100])
def test_norm_input_matches_the_unfused_norm_and_returns_the_residual_stream(with_residual, k, config):
    w, x, res, norm_w = _rand(40, k, seed=5), _rand(1, k, seed=6), _rand(1, k, seed=7), _rand(k, seed=8)
    summed = x + res if with_residual else x
    y, stream = vector_matmul(x, w, config, norm_weight=norm_w, eps=1e-5, residual=res if with_residual else None)
    torch.testing.assert_close(y, F.linear(_torch_rms_norm(summed, norm_w, 1e-5), w), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stream, summed)
    if not with_residual:
        assert stream is x  # nothing added: the stream is the input itself


@pytest.mark.parametrize("k", [96, 100])
def test_copy_engine_kernel_norm_statistics_in_several_passes(k, monkeypatch):
    """The copy-engine kernel sums x² in blocks of its own width (up to 4,096 on a GPU); narrower
    here, so the pass takes several blocks and a partial last one."""
    import runtime.model.matvec as matvec

    monkeypatch.setattr(matvec, "STATS_BLOCK_MAX", 32)
    w, x, res, norm_w = _rand(40, k, seed=5), _rand(1, k, seed=6), _rand(1, k, seed=7), _rand(k, seed=8)
    y, stream = vector_matmul(x, w, SMALL_TMA, norm_weight=norm_w, eps=1e-5, residual=res)
    torch.testing.assert_close(y, F.linear(_torch_rms_norm(x + res, norm_w, 1e-5), w), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(stream, x + res)


def test_the_copy_engine_reads_w_only_where_its_tiles_fit(monkeypatch):
    """A weight whose rows the copy engine cannot address (a row stride that is not a multiple of
    16 bytes: bf16 with K = 100) gets the same tiles through ordinary loads, with the same result."""
    import runtime.model.matvec as matvec

    launched = []
    for name in ("_vector_kernel", "_vector_tma_kernel"):
        kernel = getattr(matvec, name)
        monkeypatch.setattr(matvec, name, _Recorder(kernel, name, launched))
    for k, dtype, want in ((96, torch.bfloat16, "_vector_tma_kernel"), (100, torch.bfloat16, "_vector_kernel"),
                           (100, torch.float32, "_vector_tma_kernel")):
        w, x = _rand(24, k, seed=1).to(dtype), _rand(1, k, seed=2).to(dtype)
        got = vector_matmul(x, w, SMALL_TMA)
        assert launched.pop() == want
        torch.testing.assert_close(got.float(), F.linear(x.float(), w.float()), atol=0.05, rtol=0.02)
    assert matvec.tma_fits(torch.zeros(16, 512), VectorConfig(block_n=8, block_k=512, num_stages=2, tma=True))
    assert not matvec.tma_fits(torch.zeros(16, 96), VectorConfig(block_n=8, block_k=96, tma=True))  # not a power of 2
    assert not matvec.tma_fits(torch.zeros(16, 64, dtype=torch.bfloat16), VectorConfig(block_n=8, block_k=4, tma=True))
    big = VectorConfig(block_n=256, block_k=256, num_stages=4, tma=True)  # 512 KiB of tiles in flight
    assert not matvec.tma_fits(torch.zeros(256, 256, dtype=torch.bfloat16), big)
    vector_matmul(_rand(1, 96), _rand(24, 96), SMALL)
    assert launched.pop() == "_vector_kernel"  # tma=False never takes the copy engine


class _Recorder:
    """A kernel stand-in that notes its name at each launch and then launches the kernel."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


def test_bad_shapes_and_modes_are_refused():
    w = torch.zeros(16, 32)
    with pytest.raises(ValueError, match=r"\(1, 32\)"):
        vector_matmul(torch.zeros(2, 32), w)
    with pytest.raises(ValueError, match=r"\(1, 64\)"):
        vector_matmul(torch.zeros(1, 32), w, silu_mul=True)
    with pytest.raises(ValueError, match="not both"):
        vector_matmul(torch.zeros(1, 64), w, silu_mul=True, norm_weight=torch.ones(32))


def _routed(module: torch.nn.Module) -> torch.nn.Module:
    for layer in module.modules():
        if isinstance(layer, Linear):
            layer.vector_config = SMALL
    return module


@pytest.mark.parametrize("bias", [False, True])
def test_norm_then_linear_fuses_one_row_and_agrees_with_the_unfused_path(bias, monkeypatch):
    import runtime.model.matvec as matvec

    norm, linear = filled_randomly(RMSNorm(48, 1e-5), 1), filled_randomly(Linear(48, 20, bias=bias), 2)
    x, res = _rand(1, 48, seed=3), _rand(1, 48, seed=4)
    want = [norm_then_linear(norm, linear, x, r) for r in (res, None)]  # no route: norm kernel + F.linear
    calls = []
    real = matvec.vector_matmul
    monkeypatch.setattr(matvec, "vector_matmul", lambda *a, **kw: calls.append(kw.get("norm_weight") is not None) or real(*a, **kw))
    _routed(linear)
    for r, (want_y, want_stream) in zip((res, None), want):
        y, stream = norm_then_linear(norm, linear, x, r)
        torch.testing.assert_close(y, want_y, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(stream, want_stream)
    assert calls == [True, True]  # both through the fused kernel
    two_rows = norm_then_linear(norm, linear, torch.cat([x, x]), torch.cat([res, res]))[0]  # not one row: unfused
    torch.testing.assert_close(two_rows[:1], want[0][0], atol=1e-4, rtol=1e-4)
    assert calls == [True, True]


def test_mlp_down_fuses_silu_mul_for_one_row():
    mlp = filled_randomly(GatedMLP(32, 48), 5)
    x = _rand(1, 32, seed=6)
    want = mlp(x)
    torch.testing.assert_close(_routed(mlp)(x), want, atol=1e-4, rtol=1e-4)
