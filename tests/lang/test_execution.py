"""How programs execute: non-blocking appends, layered parameters, streaming, large batches."""

from __future__ import annotations

import threading
import time

import sgflow as sgl


def test_append_returns_before_the_model_answers_and_reading_waits():
    backend = sgl.MockBackend({"Hello": " hi"}, latency=0.3)
    seen = {}

    @sgl.function
    def prog(s):
        began = time.perf_counter()
        s += "Hello" + sgl.gen("x", max_tokens=4)
        seen["append"] = time.perf_counter() - began
        seen["value"] = s["x"]
        seen["read"] = time.perf_counter() - began

    prog.run(backend=backend)
    assert seen["append"] < 0.1 <= 0.25 < seen["read"]
    assert seen["value"] == " hi"


def test_parameters_layer_program_defaults_then_run_then_gen():
    backend = sgl.MockBackend()

    @sgl.function(temperature=0.5, max_tokens=7, top_p=0.9)
    def prog(s):
        s += "a" + sgl.gen("x")
        s += "b" + sgl.gen("y", temperature=0.0, max_tokens=3)

    prog.run(backend=backend, max_new_tokens=5, top_k=4)
    x, y = (c["sampling_params"] for c in backend.calls)
    assert (x.temperature, x.max_new_tokens, x.top_p, x.top_k) == (0.5, 5, 0.9, 4)
    assert (y.temperature, y.max_new_tokens, y.top_p, y.top_k) == (0.0, 3, 0.9, 4)


def test_template_stop_strings_are_added_to_every_gen():
    backend = sgl.MockBackend(chat_template="chatml")

    @sgl.function
    def prog(s):
        s += sgl.user("hi") + sgl.assistant(sgl.gen("x", stop="\n"))

    prog.run(backend=backend)
    assert backend.calls[0]["sampling_params"].stop == ("\n", "<|im_end|>")


def test_stream_delivers_text_before_the_program_finishes():
    backend = sgl.MockBackend({"Tell": " one two three four five six"}, latency=0.5)

    @sgl.function
    def story(s):
        s += "Tell:" + sgl.gen("story", max_tokens=64)

    state = story.run(backend=backend, stream=True)
    stamps = [(time.perf_counter(), chunk) for chunk in state.text_iter("story")]
    assert len(stamps) >= 3
    assert stamps[-1][0] - stamps[0][0] > 0.2  # chunks arrived over time, not all at the end
    assert "".join(c for _, c in stamps) == " one two three four five six"


def test_run_batch_of_a_thousand_programs_uses_a_bounded_pool():
    backend = sgl.MockBackend({"Q": " A"}, latency=0.01)
    baseline = threading.active_count()
    peak = [baseline]

    @sgl.function
    def prog(s, i):
        s += "Q" + str(i) + sgl.gen("a", max_tokens=2)
        peak[0] = max(peak[0], threading.active_count())

    began = time.perf_counter()
    states = prog.run_batch([{"i": i} for i in range(1000)], backend=backend, num_threads=16)
    assert [s["a"] for s in states[:3]] == [" A"] * 3 and len(states) == 1000
    assert peak[0] - baseline <= 16 + 1  # the batch's pool (+ the loop, if it was not running yet)
    assert backend.max_in_flight > 16  # model calls overlap beyond the body threads
    assert time.perf_counter() - began < 20


def test_independent_forks_overlap_and_join_waits_for_all():
    backend = sgl.MockBackend({"Q": " A"}, latency=0.2)

    @sgl.function
    def prog(s):
        s += "Q"
        forks = s.fork(4)
        forks += sgl.gen("a", max_tokens=2)
        forks.join()

    began = time.perf_counter()
    state = prog.run(backend=backend)
    assert state["a"] == [" A"] * 4
    assert time.perf_counter() - began < 0.2 * 4  # not one after another
    assert backend.max_in_flight == 4


def test_copy_forks_one_child_and_gathers_its_variables():
    backend = sgl.MockBackend({"Q": " A"})

    @sgl.function
    def prog(s):
        s += "Q"
        with s.copy() as child:
            child += sgl.gen("draft", max_tokens=2)
        s += sgl.gen("final", max_tokens=2)

    state = prog.run(backend=backend)
    assert state["draft"] == [" A"] and state["final"] == " A"
    assert state.text() == "Q A"  # the child's text stays in the child


def test_the_default_backend_is_used_when_none_is_given(monkeypatch):
    backend = sgl.MockBackend({"Q": " A"})
    monkeypatch.setattr(sgl.global_config, "default_backend", None)
    sgl.set_default_backend(backend)

    @sgl.function
    def prog(s):
        s += "Q" + sgl.gen("a", max_tokens=2)

    assert prog()["a"] == " A"  # calling the function runs it
    assert sgl.flush_cache() is True and sgl.get_server_info()["backend"] == "mock"


def test_a_streaming_programs_error_reaches_the_iterator():
    @sgl.function
    def broken(s):
        s += "Hello" + sgl.gen("x", max_tokens=2)
        raise RuntimeError("tool failed")

    state = broken.run(backend=sgl.MockBackend(), stream=True)
    try:
        list(state.text_iter())
    except RuntimeError as exc:
        assert "tool failed" in str(exc)
    else:
        raise AssertionError("the body's error was swallowed")


def test_endpoint_with_a_wrong_api_key_fails_with_the_status():
    import httpx
    import pytest

    from sgflow.backends.endpoint import RuntimeEndpoint
    from sgflow.backends.mock_model import MockModel
    from sgflow.errors import BackendError
    from tests.lang.fake_server import create_app

    app = create_app(MockModel(), api_key="secret")
    with pytest.raises(BackendError, match="HTTP 401"):
        RuntimeEndpoint("http://fake", api_key="wrong", transport=httpx.ASGITransport(app=app))
