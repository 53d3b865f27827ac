"""Greedy output of the Engine equals HF transformers token for token, however it is scheduled:
batched with other prompts, with the radix cache on or off, chunked prefill tiny or large, and with
a KV pool so small that requests must be retracted and re-run."""

from __future__ import annotations

import pytest

from tests.integration.engine_helpers import checked_engine, hf_greedy

MAX_NEW = 12
PROMPTS = [
    "Hello",
    "The cat sees the dog and the bird in the tree.",
    "Q: What is paris? A:",
    '{"name": "tokyo", "age": 3',
    "one two three four five six seven eight nine ten eleven twelve thirteen",
    "café 日本語",
]

ARCHS = ["llama", "qwen2", "qwen3"]


@pytest.fixture(scope="module")
def references(tiny_model_dir):
    from transformers import AutoTokenizer

    refs = {}
    for arch in ARCHS:
        path = tiny_model_dir(arch)
        tok = AutoTokenizer.from_pretrained(path)
        ids = [tok.encode(p) for p in PROMPTS]
        refs[arch] = (path, ids, hf_greedy(path, ids, MAX_NEW))
    return refs


GREEDY = {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True}

SCHEDULES = {
    "radix_on": {},
    "radix_off": {"disable_radix_cache": True},
    "chunk_7": {"chunked_prefill_size": 7},
    "chunk_7_radix_off": {"chunked_prefill_size": 7, "disable_radix_cache": True},
    "lpm": {"schedule_policy": "lpm"},
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_batched_greedy_matches_hf(references, arch, schedule):
    path, ids, expected = references[arch]
    with checked_engine(model_path=path, dtype="float32", **SCHEDULES[schedule]) as engine:
        outs = engine.generate(input_ids=ids, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == expected


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_each_prompt_alone_matches_hf(references, arch):
    path, ids, expected = references[arch]
    with checked_engine(model_path=path, dtype="float32") as engine:
        for prompt_ids, want in zip(ids, expected):
            assert engine.generate(input_ids=prompt_ids, sampling_params=GREEDY)["output_ids"] == want


def test_retraction_under_a_tiny_pool_keeps_output_identical(references):
    path, ids, expected = references["llama"]
    prompts = ids * 3  # 18 requests, ~25 tokens each at the end: far more than 64 slots
    with checked_engine(model_path=path, dtype="float32", max_total_tokens=64, disable_radix_cache=True) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == expected * 3
        assert engine.get_stats()["num_retractions"] > 0
        assert any(o["meta_info"]["num_retractions"] > 0 for o in outs)


def test_retraction_with_radix_cache_keeps_output_identical(references):
    path, ids, expected = references["qwen2"]
    with checked_engine(model_path=path, dtype="float32", max_total_tokens=64, chunked_prefill_size=5) as engine:
        outs = engine.generate(input_ids=ids * 2, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == expected * 2
        assert engine.get_stats()["num_retractions"] > 0


def test_shared_prefix_is_cached_and_still_exact(references):
    path, ids, _ = references["llama"]
    shared = ids[4]  # the longest prompt
    prompts = [shared + tail for tail in ([5, 6], [7], [8, 9, 10])]
    expected = hf_greedy(path, prompts, MAX_NEW)
    with checked_engine(model_path=path, dtype="float32") as engine:
        first = engine.generate(input_ids=prompts[0], sampling_params=GREEDY)
        assert first["meta_info"]["cached_tokens"] == 0
        rest = engine.generate(input_ids=prompts[1:], sampling_params=GREEDY)
        assert [first["output_ids"]] + [o["output_ids"] for o in rest] == expected
        assert all(o["meta_info"]["cached_tokens"] >= len(shared) for o in rest)


def test_repeated_prompt_hits_cache_up_to_last_token(references):
    path, ids, expected = references["qwen3"]
    with checked_engine(model_path=path, dtype="float32") as engine:
        engine.generate(input_ids=ids[1], sampling_params=GREEDY)
        again = engine.generate(input_ids=ids[1], sampling_params=GREEDY)
        assert again["output_ids"] == expected[1]
        # one token must be computed to get logits; everything before it comes from the cache
        assert again["meta_info"]["cached_tokens"] == len(ids[1]) - 1


def test_batch_sharing_a_long_prefix_prefills_it_once(references):
    """Submitted together, requests with a common prefix wait for the first one's prefill and then
    reuse its KV: nearly every shared token is a cache hit, and output is still exact."""
    path, ids, _ = references["llama"]
    shared = (ids[4] * 4)[:100]
    prompts = [shared + [10 + i, 20 + i] for i in range(12)]
    expected = hf_greedy(path, prompts, 4)
    with checked_engine(model_path=path, dtype="float32") as engine:
        outs = engine.generate(input_ids=prompts, sampling_params={**GREEDY, "max_new_tokens": 4})
        assert [o["output_ids"] for o in outs] == expected
        cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
        assert cached >= 11 * len(shared)


def test_chunked_prompt_reuses_its_own_cached_chunks_when_retracted(references):
    path, ids, expected = references["qwen3"]
    with checked_engine(model_path=path, dtype="float32", chunked_prefill_size=3, max_total_tokens=64) as engine:
        outs = engine.generate(input_ids=ids, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == expected
