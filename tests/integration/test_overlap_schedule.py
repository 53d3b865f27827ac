"""Overlap scheduling: step N+1 is launched before step N's tokens reach the host, and users see
exactly what they would see without it — same tokens, texts, finish reasons and logprobs, with
stop tokens, stop strings, grammars and jump-forward, seeds, retraction and failed steps — and the
KV pool whole afterwards."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.integration.engine_helpers import checked_engine

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
    "required": ["name", "n"],
}
PROMPTS = [
    "The cat sees the dog.",
    "A bird",
    "Once upon a time there was a small model that",
    "x",
    "Numbers: 1 2 3",
    "The dog and the cat and the bird and the fish",
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@contextlib.contextmanager
def engine_with(model_dir, overlap: bool, **kwargs):
    """An engine scheduling with overlap on or off. The engine turns overlap on only for CUDA
    devices (on the CPU nothing would overlap); here it is forced, so CI checks the GPU's
    scheduling path on the CPU."""
    with checked_engine(model_path=model_dir, dtype="float32", **kwargs) as eng:
        eng.scheduler.overlap = overlap  # read once per step; nothing has run yet
        yield eng


def _greedy_ids(model_dir, prompts, max_new_tokens):
    with engine_with(model_dir, overlap=False) as eng:
        outs = eng.generate(prompt=prompts, sampling_params={"max_new_tokens": max_new_tokens, "temperature": 0})
        return [o["output_ids"] for o in outs]


def _workload(model_dir):
    """Requests that end at different steps for different reasons, so later steps carry rows whose
    request already finished (dead rows) and requests that leave and rejoin."""
    plain = _greedy_ids(model_dir, PROMPTS, 24)
    prompts, params = [], []
    for i, (prompt, ids) in enumerate(zip(PROMPTS, plain)):
        # a stop token the greedy output reaches midway: finishes by "stop", unknown in advance
        prompts.append(prompt)
        params.append({"max_new_tokens": 24, "temperature": 0, "stop_token_ids": [ids[3 + i]]})
        prompts.append(prompt)
        params.append({"max_new_tokens": 5 + 3 * i, "temperature": 0, "ignore_eos": True})
        prompts.append(prompt)
        params.append({"max_new_tokens": 20, "temperature": 0.9, "top_p": 0.9, "seed": 100 + i})
    for seed in range(3):
        prompts.append("Record:")
        params.append({"max_new_tokens": 60, "temperature": 1.0, "seed": seed, "json_schema": json.dumps(SCHEMA)})
        prompts.append("Date:")
        params.append({"max_new_tokens": 30, "temperature": 1.0, "seed": seed, "regex": r"\d{4}-\d{2}-\d{2}"})
    return prompts, params


def _user_view(out):
    meta = out["meta_info"]
    entries = meta.get("output_token_logprobs", [])
    return (out["text"], out["output_ids"], meta["finish_reason"], meta["completion_tokens"],
            [t for _, t, _ in entries], [lp is None for lp, _, _ in entries])


def _logprobs(out):
    return [lp for lp, _, _ in out["meta_info"]["output_token_logprobs"] if lp is not None]


@pytest.mark.parametrize("engine_kwargs", [
    {},
    {"chunked_prefill_size": 4},
    {"max_total_tokens": 80, "disable_radix_cache": True},  # small pool: retraction while a batch is in flight
], ids=["default", "chunked", "retracting"])
def test_overlap_gives_exactly_the_results_of_sequential_scheduling(model_dir, engine_kwargs):
    prompts, params = _workload(model_dir)
    results = {}
    for overlap in (False, True):
        with engine_with(model_dir, overlap, **engine_kwargs) as eng:
            outs = eng.generate(prompt=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=2)
            results[overlap] = outs
            stats = eng.get_stats()
    assert [_user_view(o) for o in results[True]] == [_user_view(o) for o in results[False]]
    for on, off in zip(results[True], results[False]):  # batches differ in shape: float noise only
        assert _logprobs(on) == pytest.approx(_logprobs(off), abs=1e-4)
    reasons = {o["meta_info"]["finish_reason"]["type"] for o in results[True]}
    assert reasons == {"stop", "length"}
    if "max_total_tokens" in engine_kwargs:
        assert stats["num_retractions"] > 0


def _record_phases(engine):
    """Wrap the scheduler's launch and process phases to log their order."""
    sched = engine.scheduler
    log = []
    launch, process = sched._launch, sched._process

    def logged_launch():
        batch = launch()
        if batch is not None:
            log.append(("launch", id(batch)))
        return batch

    def logged_process(batch):
        log.append(("process", id(batch)))
        return process(batch)

    sched._launch, sched._process = logged_launch, logged_process
    return log


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "sequential"])
def test_next_step_is_launched_before_the_previous_one_is_processed(model_dir, overlap):
    with engine_with(model_dir, overlap) as eng:
        log = _record_phases(eng)
        eng.generate(prompt="The cat", sampling_params={"max_new_tokens": 6, "temperature": 0, "ignore_eos": True})
    kinds = [kind for kind, _ in log]
    assert kinds.count("launch") == 6 and kinds.count("process") == 6
    if overlap:
        # launch 1, launch 2, process 1, launch 3, process 2, ..., process 6
        assert kinds == ["launch"] + ["launch", "process"] * 5 + ["process"]
        assert log[2][1] == log[0][1]
    else:
        assert kinds == ["launch", "process"] * 6


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "sequential"])
def test_a_failed_step_aborts_its_requests_and_the_engine_keeps_serving(model_dir, overlap):
    with engine_with(model_dir, overlap) as eng:
        runner = eng.runner
        real_decode = runner.decode
        calls = {"n": 0}

        def failing_decode(batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("injected device fault")
            return real_decode(batch)

        runner.decode = failing_decode
        outs = eng.generate(prompt=["a b", "c d e"], sampling_params={"max_new_tokens": 8, "temperature": 0})
        for out in outs:
            reason = out["meta_info"]["finish_reason"]
            assert reason["type"] == "abort" and "injected device fault" in reason["message"]
        runner.decode = real_decode
        eng.check_integrity()
        again = eng.generate(prompt="a b", sampling_params={"max_new_tokens": 8, "temperature": 0, "ignore_eos": True})
        assert again["meta_info"]["finish_reason"]["type"] == "length"


def test_overlap_is_on_by_default_only_where_it_can_overlap(model_dir):
    with checked_engine(model_path=model_dir, dtype="float32") as eng:
        assert eng.scheduler.overlap is False  # CPU: every op is synchronous
    with checked_engine(model_path=model_dir, dtype="float32", disable_overlap_schedule=True) as eng:
        assert eng.scheduler.overlap is False
