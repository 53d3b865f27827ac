"""Engine behaviour users rely on: logprobs, seeded sampling, stops, streaming, abort, validation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from tests.integration.engine_helpers import checked_engine, hf_logits

PROMPT = "The cat sees the dog and the bird."


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def engine(model_dir):
    with checked_engine(model_path=model_dir, dtype="float32", chunked_prefill_size=16) as eng:
        yield eng


@pytest.fixture(autouse=True)
def pool_whole_after_each_test(request):
    yield
    if "engine" in request.fixturenames:
        eng = request.getfixturevalue("engine")
        _wait_idle(eng)
        eng.check_integrity()


def _wait_idle(eng, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = eng.get_stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return
        time.sleep(0.02)
    raise AssertionError("engine did not go idle")


# ---------------------------------------------------------------- logprobs
def test_prompt_and_output_logprobs_equal_log_softmax_of_hf_logits(engine, model_dir):
    ids = engine.tokenizer.encode(PROMPT)
    out = engine.generate(
        input_ids=ids,
        sampling_params={"max_new_tokens": 5, "temperature": 0, "ignore_eos": True},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=3,
    )
    full = ids + out["output_ids"]
    ref = torch.log_softmax(hf_logits(model_dir, full), dim=-1)
    meta = out["meta_info"]
    prompt_lp = meta["input_token_logprobs"]
    assert len(prompt_lp) == len(ids) and prompt_lp[0][0] is None
    for i in range(1, len(ids)):
        lp, tok, _ = prompt_lp[i]
        assert tok == ids[i]
        assert abs(lp - ref[i - 1, ids[i]].item()) < 1e-4  # tolerance: float32 accumulation order
    for k, (lp, tok, _) in enumerate(meta["output_token_logprobs"]):
        pos = len(ids) - 1 + k
        assert tok == out["output_ids"][k]
        assert abs(lp - ref[pos, tok].item()) < 1e-4
        top = meta["output_top_logprobs"][k]
        assert [t for _, t, _ in top] == ref[pos].topk(3).indices.tolist()
        assert top[0][1] == tok  # greedy picks the top token


def test_prompt_logprobs_start_midway_and_survive_chunking(engine, model_dir):
    ids = engine.tokenizer.encode(PROMPT * 3)  # longer than the 16-token chunk
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                          return_logprob=True, logprob_start_len=5)
    ref = torch.log_softmax(hf_logits(model_dir, ids), dim=-1)
    got = out["meta_info"]["input_token_logprobs"]
    assert [t for _, t, _ in got] == ids[5:]
    assert all(abs(lp - ref[5 + i - 1, ids[5 + i]].item()) < 1e-4 for i, (lp, _, _) in enumerate(got))


def test_max_new_tokens_zero_scores_the_prompt_only(engine):
    out = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 0},
                          return_logprob=True, logprob_start_len=2)
    assert out["output_ids"] == [] and out["text"] == ""
    assert len(out["meta_info"]["input_token_logprobs"]) == out["meta_info"]["prompt_tokens"] - 2


# ---------------------------------------------------------------- sampling
def test_seeded_sampling_is_reproducible_whatever_else_is_in_the_batch(engine):
    params = {"max_new_tokens": 12, "temperature": 1.0, "seed": 1234, "ignore_eos": True}
    alone = engine.generate(prompt=PROMPT, sampling_params=params)["output_ids"]
    others = {"max_new_tokens": 12, "temperature": 1.0, "ignore_eos": True}
    batch = engine.generate(prompt=["Hello there", PROMPT, "one two"], sampling_params=[others, params, others])
    assert batch[1]["output_ids"] == alone
    other_seed = engine.generate(prompt=PROMPT, sampling_params={**params, "seed": 99})["output_ids"]
    assert other_seed != alone


def test_n_copies_get_distinct_samples(engine):
    outs = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 8, "n": 3, "seed": 5, "ignore_eos": True})
    assert len(outs) == 3 and len({tuple(o["output_ids"]) for o in outs}) > 1


def test_top_k_one_equals_greedy(engine):
    greedy = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 8, "temperature": 0, "ignore_eos": True})
    topk = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 8, "temperature": 0.7, "top_k": 1, "ignore_eos": True})
    assert greedy["output_ids"] == topk["output_ids"]


# ---------------------------------------------------------------- stops
def _greedy(engine, n=24):
    return engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": n, "temperature": 0, "ignore_eos": True})


def _boundary_stop(engine, ids):
    """A stop string made of the end of one token and the start of the next (both plain ASCII)."""
    pieces = [engine.tokenizer.decode([t]) for t in ids]
    for k in range(len(pieces) - 1):
        a, b = pieces[k], pieces[k + 1]
        if len(a) >= 2 and len(b) >= 1 and (a + b).isascii() and (a + b).strip():
            return k, a[-2:] + b[:1]
    pytest.skip("no ASCII token boundary in this greedy output")


def test_stop_string_spanning_tokens_is_found_and_trimmed(engine):
    ref = _greedy(engine)
    k, stop = _boundary_stop(engine, ref["output_ids"])
    text_before = engine.tokenizer.decode(ref["output_ids"][: k + 1])
    out = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 24, "temperature": 0, "ignore_eos": True, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert stop not in out["text"]
    assert ref["text"].startswith(out["text"]) and (out["text"] + stop) in ref["text"]
    assert out["text"] == text_before[: text_before.find(stop)] if stop in text_before else True
    kept = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 24, "temperature": 0, "ignore_eos": True,
                                                           "stop": [stop], "no_stop_trim": True})
    assert kept["text"] == out["text"] + stop


def test_stop_token_id_ends_generation_with_that_token(engine):
    ref = _greedy(engine)["output_ids"]
    stop_id = ref[3]
    out = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 24, "temperature": 0, "ignore_eos": True,
                                                          "stop_token_ids": [stop_id]})
    first = ref.index(stop_id)
    assert out["output_ids"] == ref[: first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_id}


def test_min_new_tokens_blocks_early_stops(engine):
    ref = _greedy(engine)["output_ids"]
    out = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 10, "temperature": 0, "ignore_eos": True,
                                                          "stop_token_ids": [ref[0]], "min_new_tokens": 4})
    assert len(out["output_ids"]) >= 4
    assert ref[0] not in out["output_ids"][:4]


def test_length_finish_reason_reports_the_limit(engine):
    out = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 3, "temperature": 0, "ignore_eos": True})
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
    assert out["meta_info"]["completion_tokens"] == 3


# ---------------------------------------------------------------- streaming
def test_streamed_chunks_join_to_the_full_text(engine):
    params = {"max_new_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = engine.generate(prompt="café 日本語 🙂", sampling_params=params)
    chunks = list(engine.generate(prompt="café 日本語 🙂", sampling_params=params, stream=True))
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert sum((c["output_ids"] for c in chunks), []) == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert all("\ufffd" not in c["text"] for c in chunks[:-1]) or "\ufffd" in full["text"]


def test_async_generate_and_async_stream(engine):
    params = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}

    async def go():
        single = await engine.async_generate(prompt=PROMPT, sampling_params=params)
        stream = await engine.async_generate(prompt=PROMPT, sampling_params=params, stream=True)
        text = "".join([c["text"] async for c in stream])
        return single, text

    single, text = asyncio.run(go())
    assert text == single["text"] == engine.generate(prompt=PROMPT, sampling_params=params)["text"]


# ---------------------------------------------------------------- abort
def test_abort_while_running_frees_everything(engine):
    stream = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 200, "ignore_eos": True}, stream=True)
    first = next(stream)
    assert first["meta_info"]["finish_reason"] is None
    stream.close()  # the consumer hangs up: the request is aborted
    _wait_idle(engine)


def test_abort_by_rid_while_waiting_and_while_prefilling(model_dir):
    with checked_engine(model_path=model_dir, dtype="float32", max_running_requests=1, chunked_prefill_size=4) as eng:
        results = {}

        def run(rid, prompt):
            results[rid] = eng.generate(prompt=prompt, sampling_params={"max_new_tokens": 100, "ignore_eos": True}, rid=rid)

        threads = [threading.Thread(target=run, args=(f"r{i}", PROMPT * 4)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        for i in range(3):
            eng.abort(f"r{i}")
        for t in threads:
            t.join(timeout=30)
        assert {r["meta_info"]["finish_reason"]["type"] for r in results.values()} == {"abort"}
        _wait_idle(eng)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"prompt": PROMPT, "sampling_params": {"max_new_token": 3}}, ["max_new_token"]),
        ({"prompt": PROMPT, "sampling_params": {"max_new_tokens": -1}}, ["max_new_tokens"]),
        ({"prompt": PROMPT, "sampling_params": {"temperature": float("nan")}}, ["temperature"]),
        ({"prompt": PROMPT, "sampling_params": {"top_p": 1.5}}, ["top_p"]),
        ({"prompt": PROMPT, "sampling_params": {"stop": ["x"] * 40}}, ["stop", "32"]),
        ({"prompt": PROMPT, "sampling_params": {"n": 65}}, ["n"]),
        ({"prompt": ""}, ["empty"]),
        ({"input_ids": [1, 2, 10**6]}, ["1000000", "vocabulary"]),
        ({"prompt": PROMPT * 200}, ["context length"]),
        ({"prompt": PROMPT, "sampling_params": {"max_new_tokens": 10**6}}, ["max_new_tokens", "context length"]),
        ({"prompt": PROMPT, "logprob_start_len": 10**4}, ["logprob_start_len"]),
        ({"prompt": PROMPT, "input_ids": [1]}, ["exactly one"]),
    ],
)
def test_bad_input_raises_a_clear_error_and_leaves_the_engine_working(engine, kwargs, words):
    with pytest.raises(ValueError) as info:
        engine.generate(**kwargs)
    for w in words:
        assert w in str(info.value)
    assert engine.generate(prompt="ok", sampling_params={"max_new_tokens": 2})["meta_info"]["completion_tokens"] >= 1


def test_prompt_too_long_message_has_both_numbers(engine):
    ids = [5] * (engine.context_len + 3)
    with pytest.raises(ValueError, match=rf"{len(ids)} tokens.*{engine.context_len}"):
        engine.generate(input_ids=ids)


def test_flush_cache_empties_the_prefix_cache(engine):
    engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 2})
    assert engine.get_stats()["kv_cached"] > 0
    assert engine.flush_cache() is True
    assert engine.get_stats()["kv_cached"] == 0


def test_a_stream_never_read_does_not_pin_its_rid(engine):
    params = {"max_new_tokens": 3, "temperature": 0}
    unread = engine.generate(prompt=PROMPT, sampling_params=params, stream=True, rid="once")  # noqa: F841
    _wait_idle(engine)
    out = engine.generate(prompt=PROMPT, sampling_params=params, rid="once")  # the rid is free again
    assert out["meta_info"]["id"] == "once"


def test_a_live_rid_cannot_be_reused(engine):
    stream = engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 200, "ignore_eos": True},
                             stream=True, rid="busy")
    next(stream)
    with pytest.raises(ValueError, match="busy"):
        engine.generate(prompt=PROMPT, rid="busy")
    stream.close()


def test_step_counters_count_prompt_tokens_and_decode_rows(engine):
    """get_stats() counts what each step computed: benchmarks read the mean decode batch from it."""
    engine.flush_cache()
    before = engine.get_stats()
    prompts = [[7 + i for i in range(10)], [50 + i for i in range(6)]]
    engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 4, "ignore_eos": True, "temperature": 0})
    after = engine.get_stats()
    delta = {k: after[k] - before[k] for k in ("num_extend_steps", "extend_tokens", "num_decode_steps", "decode_rows")}
    # one extend step for both prompts (their first tokens), then 3 decode steps of 2 rows
    assert delta == {"num_extend_steps": 1, "extend_tokens": 16, "num_decode_steps": 3, "decode_rows": 6}


def test_start_up_objects_are_frozen_while_an_engine_runs_and_collectable_after(model_dir):
    """A full cyclic collection would walk every start-up object mid-run (it paused the scheduler
    224 ms on the CPU): they are frozen while the engine runs, and thawed at shutdown, so an engine's
    own cycles are collected once it is gone."""
    import gc
    import weakref

    from runtime import Engine

    engine = Engine(model_path=model_dir, dtype="float32")
    try:
        assert gc.get_freeze_count() > 10_000
        model = weakref.ref(engine.runner.model)
        engine.generate(prompt=PROMPT, sampling_params={"max_new_tokens": 2})
        engine.check_integrity()
    finally:
        engine.shutdown()
    assert gc.get_freeze_count() == 0
    del engine
    gc.collect()
    assert model() is None, "the shut-down engine's model is still alive"
