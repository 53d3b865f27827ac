"""quantization="fp8" end to end on the CPU: the engine serves with fp8 weights, a request's numbers
barely depend on its batch (every input row is quantised with its own scale, so its neighbours
cannot change its scale), the KV pool stays whole, and the model stays near the bf16 model.

Not bit for bit: even in bf16 the CPU attention sums differ a little between a request alone and in
a batch (first-step logprobs move ~0.02 here), and fp8 rounding can turn such a difference into a
code one step away. So the tests compare the prefill's token and logprob values with tolerances."""

from __future__ import annotations

import pytest
import torch

from tests.integration.engine_helpers import checked_engine

PROMPTS = [[5, 9, 14, 3, 77, 21, 8], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [7, 7, 7, 100, 3]]
GREEDY = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}


def _prompt_logprobs(engine, ids):
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                          return_logprob=True, logprob_start_len=0)
    return torch.tensor([lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]])


def test_fp8_weights_are_batch_and_cache_invariant_and_near_bf16(tiny_model_dir):
    path = tiny_model_dir("llama", hidden_size=128, intermediate_size=256)
    with checked_engine(model_path=path, dtype="bfloat16", quantization="fp8") as engine:
        assert engine.runner.model.model.layers[0].self_attn.qkv_proj.weight.dtype == torch.float8_e4m3fn
        params = dict(sampling_params=GREEDY, return_logprob=True)
        alone = [engine.generate(input_ids=p, **params) for p in PROMPTS]
        engine.flush_cache()
        batched = engine.generate(input_ids=PROMPTS, **params)
        cached = engine.generate(input_ids=PROMPTS, **params)  # prefixes hit
        for one, many, hit in zip(alone, batched, cached):
            assert one["output_ids"][0] == many["output_ids"][0] == hit["output_ids"][0]
            first = [run["meta_info"]["output_token_logprobs"][0][0] for run in (one, many, hit)]
            assert max(first) - min(first) < 0.05, first
        fp8_logprobs = _prompt_logprobs(engine, PROMPTS[1])
    with checked_engine(model_path=path, dtype="bfloat16") as engine:
        bf16_logprobs = _prompt_logprobs(engine, PROMPTS[1])
    rel = float((fp8_logprobs - bf16_logprobs).norm() / bf16_logprobs.norm())
    # lossy, but close: a lost or misapplied scale moves the logprobs by far more (tens of percent)
    assert 0 < rel < 0.15, rel


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fp8_weights_need_bfloat16(tiny_model_dir, dtype):
    from runtime import Engine

    with pytest.raises(ValueError, match="quantization='fp8' needs dtype bfloat16"):
        Engine(model_path=tiny_model_dir("llama"), dtype=dtype, quantization="fp8")
