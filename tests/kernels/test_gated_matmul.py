"""The MLP's gated product in one kernel (silu·mul applied before its output is written) under
TRITON_INTERPRET=1: against torch, through the copy engine and plain loads, at sizes its tiles do not
divide; the start-up choice between it and cuBLAS per batch size; and the model code that routes an
MLP through it, down to the engine's greedy tokens."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

from runtime.model.gated_choice import GatedRoute, choose_gated_routes, route_from_times  # noqa: E402
from runtime.model.gated_matmul import GatedConfig, fits, silu_mul_matmul  # noqa: E402
from runtime.model.layers import GatedMLP, RMSNorm, _torch_rms_norm  # noqa: E402
from runtime.triton_interpreter import copy_engine_addressable  # noqa: E402
from tests.interpreted_triton import filled_randomly  # noqa: E402

SMALL = GatedConfig(block_m=16, block_n=16, block_k=32, group_m=2, num_warps=4, num_stages=2)
SMALL_TMA = GatedConfig(block_m=16, block_n=16, block_k=32, group_m=2, num_warps=4, num_stages=2, tma=True)
SMALL_WS = GatedConfig(block_m=16, block_n=16, block_k=32, group_m=2, num_warps=4, num_stages=2, tma=True,
                       warp_specialize=True)
CONFIGS = pytest.mark.parametrize("config", [SMALL, SMALL_TMA, SMALL_WS], ids=["loads", "tma", "ws"])


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _unfused(x, weight):
    gate, up = weight.chunk(2)
    return F.silu(F.linear(x, gate)) * F.linear(x, up)


@CONFIGS
@pytest.mark.parametrize("m, inner, k", [(1, 16, 32), (5, 24, 40), (70, 40, 96), (33, 48, 100)])
def test_product_matches_the_unfused_mlp(m, inner, k, config):
    """Rows, columns and K that the tiles do not divide; 70 rows span several groups of row blocks."""
    x, weight = _rand(m, k, seed=1), _rand(2 * inner, k, seed=2)
    torch.testing.assert_close(silu_mul_matmul(x, weight, config), _unfused(x, weight), atol=2e-4, rtol=1e-4)


def test_strided_rows_and_no_rows():
    x, weight = _rand(12, 80, seed=3)[:, :40], _rand(32, 40, seed=4)  # rows 80 apart
    torch.testing.assert_close(silu_mul_matmul(x, weight, SMALL), _unfused(x, weight), atol=2e-4, rtol=1e-4)
    assert silu_mul_matmul(torch.zeros(0, 40), weight, SMALL).shape == (0, 16)


def test_bad_inputs_are_refused_with_the_shapes_named():
    with pytest.raises(ValueError, match=r"\(3, 32\) and \(16, 40\)"):
        silu_mul_matmul(torch.zeros(3, 32), torch.zeros(16, 40))
    with pytest.raises(ValueError, match="even number, got 15"):
        silu_mul_matmul(torch.zeros(3, 32), torch.zeros(15, 32))
    with pytest.raises(ValueError, match="one dtype"):
        silu_mul_matmul(torch.zeros(3, 32), torch.zeros(16, 32, dtype=torch.float64))


def test_a_shape_runs_only_where_its_pipeline_and_copies_fit():
    weight = torch.zeros(64, 256, dtype=torch.bfloat16)
    assert fits(GatedConfig(), weight)  # 3 × (128 + 256) × 64 × 2 bytes = 144 KiB of a Hopper's 227
    assert not fits(GatedConfig(block_k=128, num_stages=4), weight)  # 384 KiB
    assert fits(SMALL_TMA, weight)
    assert not fits(GatedConfig(block_n=24, tma=True), weight)  # a copy-engine tile side must be a power of 2
    assert not fits(SMALL_TMA, torch.zeros(64, 100, dtype=torch.bfloat16))  # 200-byte rows: not 16-aligned
    # where the copy engine cannot read the weight (136-byte rows) or x (rows 164 bytes apart), the same
    # tiles come through plain loads
    x, odd = _rand(4, 34, seed=5), _rand(32, 34, seed=6)
    assert not fits(SMALL_TMA, odd)
    torch.testing.assert_close(silu_mul_matmul(x, odd, SMALL_TMA), _unfused(x, odd), atol=2e-4, rtol=1e-4)
    x, weight = _rand(4, 41, seed=7)[:, :40], _rand(32, 40, seed=8)
    assert fits(SMALL_TMA, weight) and not copy_engine_addressable(x)
    torch.testing.assert_close(silu_mul_matmul(x, weight, SMALL_TMA), _unfused(x, weight), atol=2e-4, rtol=1e-4)


def test_route_takes_our_kernel_only_where_it_wins_by_the_margin():
    fast, slow = SMALL, SMALL_TMA
    times = {
        32: {"cublas": 10.0, fast: 9.9, slow: 12.0},  # 1% faster: inside the noise, cuBLAS stays
        128: {"cublas": 10.0, fast: 9.0, slow: 8.0},  # the faster of ours
        512: {"cublas": 10.0, fast: 11.0, slow: 10.5},
        2048: {"cublas": 100.0, fast: 90.0, slow: float("inf")},  # a shape that failed to build
    }
    route = route_from_times(times)
    assert route.steps == ((17, None), (64, slow), (256, None), (1024, fast))
    assert [route.config_for(m) for m in (1, 16, 17, 63, 64, 255, 256, 1023, 1024, 100_000)] == [
        None, None, None, None, slow, slow, None, None, fast, fast]
    assert route.us[128] == {"cublas": 10.0, str(fast): 9.0, str(slow): 8.0}
    assert GatedRoute().config_for(4096) is None and str(GatedRoute()) == "cublas"


def test_choice_times_each_weight_shape_once_up_to_the_largest_step():
    model = torch.nn.ModuleList([GatedMLP(32, 48), GatedMLP(32, 48), GatedMLP(32, 64)])
    calls = []

    def timer(kind, weight, m):
        calls.append((tuple(weight.shape), m, str(kind)))
        return 5.0 if kind == SMALL else 10.0

    too_big = GatedConfig(block_m=256, block_n=256, block_k=256, num_stages=4)  # never fits: never timed
    chosen = choose_gated_routes(model, max_m=600, timer=timer, candidates=(SMALL, too_big), check=lambda mlp: True)
    assert set(chosen) == {(96, 32), (128, 32)}
    assert {m for _, m, _ in calls} == {32, 128, 512}  # the timed sizes up to max_m
    assert str(too_big) not in {kind for *_, kind in calls}
    assert len(calls) == 2 * 3 * 2 * 3  # shapes × sizes × kinds × rounds
    assert model[0].gated_route is model[1].gated_route is chosen[(96, 32)]
    assert model[2].gated_route.config_for(1000) == SMALL


def test_mlp_routes_by_batch_size_and_agrees_with_the_unfused_path(monkeypatch):
    import runtime.model.gated_matmul as gated

    mlp, norm = filled_randomly(GatedMLP(32, 40), 7), filled_randomly(RMSNorm(32, 1e-5), 8)
    x, res = _rand(20, 32, seed=9), _rand(20, 32, seed=10)
    want = mlp(x)
    want_sublayer = [mlp.forward_after_norm(norm, x, r) for r in (res, None)]
    launched = []
    real = gated.silu_mul_matmul
    monkeypatch.setattr(gated, "silu_mul_matmul", lambda *a, **kw: launched.append(a[0].shape[0]) or real(*a, **kw))
    mlp.gated_route = GatedRoute(((8, SMALL),))
    torch.testing.assert_close(mlp(x), want, atol=1e-4, rtol=1e-4)
    for r, (want_y, want_stream) in zip((res, None), want_sublayer):
        y, stream = mlp.forward_after_norm(norm, x, r)
        torch.testing.assert_close(y, want_y, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(stream, want_stream)
    torch.testing.assert_close(mlp.forward_after_norm(norm, x[:4], res[:4])[0], want_sublayer[0][0][:4],
                               atol=1e-4, rtol=1e-4)
    assert launched == [20, 20, 20]  # 4 rows: below the route's first step, the unfused path
    normed = _torch_rms_norm(x + res, norm.weight, 1e-5)
    torch.testing.assert_close(want_sublayer[0][0], mlp.down_proj(_unfused(normed, mlp.gate_up_proj.weight)),
                               atol=1e-4, rtol=1e-4)


def test_engine_greedy_tokens_are_the_same_through_the_gated_kernel(tiny_model_dir):
    from runtime.model.layers import GatedMLP as MLP
    from tests.integration.engine_helpers import checked_engine

    prompts = [[5, 9, 13, 2, 7, 11, 3], [4, 8], list(range(3, 40))]
    params = {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}
    with checked_engine(model_path=tiny_model_dir("llama"), dtype="float32", chunked_prefill_size=16) as engine:
        assert engine.runner.gated_routes == {}  # start-up times routes on GPUs only
        want = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
        mlps = [m for m in engine.runner.model.modules() if isinstance(m, MLP)]
        for mlp in mlps:
            mlp.gated_route = GatedRoute(((1, SMALL),))
        engine.flush_cache()
        got = [o["output_ids"] for o in engine.generate(input_ids=prompts, sampling_params=params)]
    assert mlps and got == want
