"""The native routes: /generate (whole and streamed), health, info, cache flush, abort, metrics."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.server.conftest import assert_pool_whole, running_server, sse_events
from tests.server.scripted_model import SCRIPT_TEXT


@pytest.fixture(scope="module")
def server(scripted_model):
    with running_server(scripted_model) as served:
        yield served


def _post(served, path, body, timeout=60):
    return httpx.post(served.url + path, json=body, timeout=timeout)


def _stream(served, body) -> list:
    with httpx.stream("POST", served.url + "/generate", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.iter_lines())


def test_generate_returns_text_ids_and_meta_info_like_the_engine(server):
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 20, "temperature": 0}}
    result = _post(server, "/generate", body).json()
    assert result["text"] == SCRIPT_TEXT
    engine = server.engine.generate(prompt="Hello", sampling_params=body["sampling_params"])
    assert result["output_ids"] == engine["output_ids"]
    meta = result["meta_info"]
    assert meta["finish_reason"] == {"type": "stop", "matched": server.engine.tokenizer.eos_token_id}
    assert meta["prompt_tokens"] == len(server.engine.tokenizer.encode("Hello"))
    assert meta["completion_tokens"] == len(result["output_ids"])


def test_generate_batch_of_texts_and_of_token_ids(server):
    ids = server.engine.tokenizer.encode("Hello")
    by_text = _post(server, "/generate", {"text": ["Hello", "xyz"], "sampling_params": {"max_new_tokens": 3}}).json()
    by_ids = _post(server, "/generate", {"input_ids": [ids, ids], "sampling_params": {"max_new_tokens": 5}}).json()
    assert [r["text"] for r in by_text] == ["caf", "caf"]
    assert [r["text"] for r in by_ids] == ["café", "café"]


def test_stream_events_carry_the_response_so_far_then_done(server):
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 20, "temperature": 0}}
    events = _stream(server, body)
    assert events[-1] == "[DONE]"
    objects = events[:-1]
    for before, after in zip(objects, objects[1:]):
        assert after["text"].startswith(before["text"])
        assert after["output_ids"][: len(before["output_ids"])] == before["output_ids"]
    assert objects[-1]["text"] == SCRIPT_TEXT
    assert [o["meta_info"]["finish_reason"] is not None for o in objects].count(True) == 1
    assert all("\ufffd" not in o["text"] for o in objects)


def test_stream_of_n_copies_tags_each_event_with_its_index(server):
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 5, "n": 3}}
    events = _stream(server, body)[:-1]
    last = {}
    for event in events:
        last[event["index"]] = event
    assert sorted(last) == [0, 1, 2]
    assert all(e["text"] == "café" and e["meta_info"]["finish_reason"]["type"] == "length" for e in last.values())


def test_stream_logprobs_match_the_ids_delivered(server):
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": 6}, "return_logprob": True, "top_logprobs_num": 2}
    for event in _stream(server, body)[:-1]:
        meta = event["meta_info"]
        assert [t[1] for t in meta["output_token_logprobs"]] == event["output_ids"]
        assert len(meta["output_top_logprobs"]) == len(event["output_ids"])


def test_health_and_health_generate(server):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/health_generate", timeout=30).status_code == 200


def test_model_and_server_info(server, scripted_model):
    info = httpx.get(server.url + "/get_model_info").json()
    assert info["model_path"] == scripted_model and info["vocab_size"] == 384
    server_info = httpx.get(server.url + "/get_server_info").json()
    assert server_info["engine_config"]["max_n"] == server.engine.config.max_n
    assert set(server_info["stats"]) >= {"kv_free", "kv_cached", "kv_total", "num_running", "num_waiting"}
    assert server_info["server_args"]["api_key_required"] is False


def test_flush_cache_empties_the_prefix_cache_when_idle(server):
    _post(server, "/generate", {"text": "Hello there", "sampling_params": {"max_new_tokens": 2}})
    assert assert_pool_whole(server)["kv_cached"] > 0
    response = _post(server, "/flush_cache", {})
    assert response.status_code == 200 and response.json()["success"] is True
    assert assert_pool_whole(server)["kv_cached"] == 0


def test_abort_request_ends_a_running_stream_by_rid(server):
    body = {"text": "Hello", "rid": "abort-me", "stream": True,
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
    events = []
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
                break
        assert _post(server, "/abort_request", {"rid": "abort-me"}).status_code == 200
        events.extend(line for line in lines if line.startswith("data: "))
    parsed = sse_events(events)
    assert parsed[-1] == "[DONE]"
    final = parsed[-2]
    assert final["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(final["output_ids"]) < 400
    assert_pool_whole(server)


def test_metrics_expose_counters_gauges_and_latency_histograms(server):
    for stream in (False, True):
        _post(server, "/v1/completions", {"model": "m", "prompt": "Hello", "max_tokens": 5, "stream": stream})
    text = httpx.get(server.url + "/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    stats = httpx.get(server.url + "/get_server_info").json()["stats"]
    assert values["sgflow_prompt_tokens_total"] == stats["prompt_tokens"]
    assert values["sgflow_generation_tokens_total"] == stats["generation_tokens"]
    assert values["sgflow_kv_total_tokens"] == stats["kv_total"]
    for name in ("sgflow_num_running_requests", "sgflow_num_queued_requests", "sgflow_cache_hit_rate", "sgflow_kv_usage"):
        assert name in values
    assert values["sgflow_time_to_first_token_seconds_count"] >= 2
    assert values["sgflow_inter_token_latency_seconds_count"] >= 8  # 4 gaps in each of the two requests
    assert values['sgflow_http_requests_total{route="/v1/completions",status="200"}'] >= 2


def test_requests_beyond_the_engine_capacity_get_503_with_retry_after(scripted_model):
    with running_server(scripted_model, max_running_requests=1, max_queued_requests=1) as served:
        body = {"text": "Hello", "stream": True, "sampling_params": {"max_new_tokens": 450, "ignore_eos": True}}
        with httpx.Client(timeout=60) as client:
            streams = [client.stream("POST", served.url + "/generate", json=body) for _ in range(2)]
            responses = [s.__enter__() for s in streams]  # headers sent: both admitted
            try:
                refused = client.post(served.url + "/generate", json={"text": "x"})
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == 503
            finally:
                for s in streams:
                    s.__exit__(None, None, None)
        assert _post(served, "/generate", {"text": "Hello", "sampling_params": {"max_new_tokens": 2}}).status_code == 200
        assert responses[0].status_code == 200
