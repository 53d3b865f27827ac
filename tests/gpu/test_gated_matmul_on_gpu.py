"""On a CUDA machine (skipped elsewhere): the MLP's gated product in one kernel at the Llama-3-8B
gate_up shape, each launch shape start-up may choose, against float32 and against the unfused bf16
path; then an engine whose MLPs all take it, against the same engine on cuBLAS + silu·mul."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("m", [17, 300, 1000, 4096])
def test_every_candidate_is_as_accurate_as_the_unfused_path(m):
    from runtime.model.gated_matmul import CANDIDATES, fits, silu_mul_matmul
    from runtime.model.layers import silu_and_mul

    gen = torch.Generator(device="cuda").manual_seed(m)
    w = torch.randn(28672, 4096, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.02
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    exact = F.silu(F.linear(x.float(), w[:14336].float())) * F.linear(x.float(), w[14336:].float())
    unfused = _rel(silu_and_mul(F.linear(x, w)), exact)
    for config in CANDIDATES:
        assert fits(config, w), config  # every candidate runs as written on a Hopper card
        assert _rel(silu_mul_matmul(x, w, config), exact) <= 1.2 * unfused + 1e-4, config


def test_engine_on_the_gated_product_tracks_cublas(tiny_model_dir):
    """Twenty requests decode together (M = 20, above the skinny kernel's range), once with every MLP
    on the fused product (the timing bar at 0: ours always wins) and once with it switched off. A
    random tiny model amplifies bf16 rounding, so each run is compared with float32 HF on the same
    weights and tokens, and ours may not be less accurate than cuBLAS."""
    from transformers import AutoModelForCausalLM

    from runtime.model import gated_choice
    from tests.integration.engine_helpers import checked_engine

    path = tiny_model_dir("llama", hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=1536)
    prompts = [list(range(10 + i, 60 + 3 * i)) for i in range(20)]
    params = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).float().cuda().eval()
    errors = {}
    for label, options in (("ours", {}), ("cublas", {"disable_gated_matmul": True})):
        bar = gated_choice.MIN_SPEEDUP
        gated_choice.MIN_SPEEDUP = 0.0
        try:
            with checked_engine(model_path=path, dtype="bfloat16", **options) as engine:
                routes = engine.runner.gated_routes
                outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True,
                                       top_logprobs_num=5)
        finally:
            gated_choice.MIN_SPEEDUP = bar
        if label == "ours":
            assert routes and all(route.config_for(20) is not None for route in routes.values())
        else:
            assert routes == {}
        errors[label] = _mean_error(reference, prompts, outs)
    # a wrong tile or a lost term moves logprobs by whole nats; rounding by hundredths
    assert errors["ours"] <= 1.5 * errors["cublas"] + 0.01, errors


def _mean_error(model, prompts, outs) -> float:
    """Mean |logprob - float32 HF's| over each request's decode steps' top-5 entries."""
    errors = []
    for prompt, out in zip(prompts, outs):
        ids = out["output_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids[:-1]], device="cuda")).logits[0, len(prompt) - 1:]
        reference = torch.log_softmax(logits.float(), dim=-1).cpu()
        errors += [abs(lp - float(reference[step, token]))
                   for step, top in enumerate(out["meta_info"]["output_top_logprobs"]) if step >= 1
                   for lp, token, _ in top]
    return sum(errors) / len(errors)
