"""EngineConfig refuses values it cannot honour, naming the field and the limit."""

from __future__ import annotations

import pytest

from runtime.config import EngineConfig


@pytest.mark.parametrize("kwargs, words", [
    ({"jump_forward_max_batch": 0}, ["jump_forward_max_batch", ">= 1"]),
    ({"mem_fraction_static": 1.5}, ["mem_fraction_static", "(0, 1)"]),
    ({"max_running_requests": 0}, ["max_running_requests", ">= 1"]),
    ({"chunked_prefill_size": 0}, ["chunked_prefill_size", "-1"]),
    ({"page_size": 16}, ["page_size", "1"]),
    ({"attention_backend": "cudnn"}, ["attention_backend", "triton"]),
    ({"kv_cache_dtype": "int8"}, ["kv_cache_dtype", "fp8_e4m3"]),
    ({"quantization": "int4"}, ["quantization", "fp8"]),
])
def test_bad_value_is_refused_with_the_field_and_limit(kwargs, words):
    with pytest.raises(ValueError) as err:
        EngineConfig(**kwargs)
    assert all(w in str(err.value) for w in words)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="overlap_schedule"):
        EngineConfig.from_kwargs(overlap_schedule=True)


def test_overlap_is_on_and_jump_forward_limit_automatic_by_default():
    config = EngineConfig()
    assert config.disable_overlap_schedule is False and config.jump_forward_max_batch is None


@pytest.mark.parametrize("pool_tokens, expected", [(2, 16), (16 * 512, 16), (300 * 512 + 511, 300), (10**7, 1024)])
def test_running_request_cap_follows_the_kv_pool(pool_tokens, expected):
    from runtime.model_runner import auto_max_running_requests

    assert auto_max_running_requests(pool_tokens) == expected


def test_engine_resolves_the_running_cap_and_sizes_its_request_table(tiny_model_dir):
    from tests.integration.engine_helpers import checked_engine

    path = tiny_model_dir("llama")
    with checked_engine(model_path=path, dtype="float32", max_total_tokens=40 * 512) as engine:
        assert engine.config.max_running_requests == 40  # what the scheduler and server read
        assert engine.runner.req_to_token_pool.req_to_token.shape[0] >= 40
    with checked_engine(model_path=path, dtype="float32", max_total_tokens=40 * 512, max_running_requests=3) as engine:
        assert engine.config.max_running_requests == 3


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_cache_holds_four_times_the_float32_tokens_and_serves(tiny_model_dir, kv_cache_dtype):
    import torch

    from tests.integration.engine_helpers import checked_engine

    path = tiny_model_dir("llama")
    sizes = {}
    for kv in ("auto", kv_cache_dtype):
        with checked_engine(model_path=path, dtype="float32", kv_cache_bytes=2**22, kv_cache_dtype=kv,
                            attention_backend="torch_native") as engine:
            sizes[kv] = engine.max_total_tokens
            out = engine.generate(input_ids=[[5, 6, 7, 8, 9]] * 2, sampling_params={"max_new_tokens": 6, "ignore_eos": True})
            assert [len(o["output_ids"]) for o in out] == [6, 6]
            assert engine.runner.kv_pool.k_buffers[0].dtype == (torch.float32 if kv == "auto" else
                                                                {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[kv])
    assert sizes[kv_cache_dtype] == 4 * sizes["auto"]
