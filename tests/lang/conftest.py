"""Backends for the shared program suite. Every program runs on each target:

    mock      MockBackend (the native protocol code over a scripted model)
    endpoint  RuntimeEndpoint over HTTP to an in-process fake server wrapping the same model
    engine    the in-process runtime Engine on a tiny random model (skipped if the runtime is absent)
    server    Runtime: `python -m runtime serve` on the tiny model, over HTTP (skipped until it exists)

On scripted targets the answers are known, so tests also check content; on the engine only
the properties that hold for any model are checked.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import pytest

from sgflow.backends.mock import MockBackend
from sgflow.backends.mock_model import MockModel

RULES = {
    "capital of France": " Paris",
    "capital of the United States": " Washington",
    "capital of Japan": " Tokyo",
    "capital of Italy": " Rome",
    "hours in a day is": "24",
    "days in a year is": "365",
    "Is the sky blue": " Yes, it is.",
    "Tell me a story": " Once upon a time there was a cat. It was happy.\n\nThe end.",
    "good person to answer": " a geographer. They know.",
    "A name: ": '"Bob"',
    "would answer that": " the capital is Paris. Done.",
    "calculate(": "257*983) = the product",
    "Thought": " I should look it up.",
    "Action 1: ": "Search",
    "Tip ": " Keep it short. More words follow.\n\nNext.",
    "JSON:": '{"name": "Paris", "population": 2100000}',
    "IP address": "8.8.8.8",
    "Hello": " Hi there! How can I help?",
}


@dataclass
class Target:
    name: str
    backend: Any
    scripted: bool  # answers follow RULES
    model: Any = None  # the scripted MockModel behind the backend (its `calls`), if any


def make_mock(**kwargs: Any) -> MockBackend:
    return MockBackend(RULES, **kwargs)


def _engine_available() -> bool:
    try:
        return importlib.util.find_spec("runtime.engine") is not None
    except ImportError:
        return False


@pytest.fixture(scope="session")
def tiny_model_path(tiny_model_dir) -> str:
    return tiny_model_dir("llama")  # tests/conftest.py builds it once per session


@pytest.fixture(scope="session")
def engine_backend(tiny_model_path):
    import sgflow

    backend = sgflow.Engine(model_path=tiny_model_path, dtype="float32", device="cpu", random_seed=0)
    yield backend
    backend.shutdown()


def _endpoint(model: MockModel) -> Any:
    import httpx

    from sgflow.backends.endpoint import RuntimeEndpoint
    from tests.lang.fake_server import create_app

    app = create_app(model, api_key="secret")
    return RuntimeEndpoint("http://fake-server", api_key="secret", transport=httpx.ASGITransport(app=app))


def _server_available() -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("runtime.__main__", "runtime.server.launch"))
    except ImportError:
        return False


@pytest.fixture(scope="session")
def server_backend(tiny_model_path):
    import sgflow

    runtime = sgflow.Runtime(model_path=tiny_model_path, dtype="float32", device="cpu", launch_timeout=120)
    yield runtime
    runtime.shutdown()


@pytest.fixture(params=["mock", "endpoint", "engine", "server"])
def target(request) -> Target:
    if request.param == "mock":
        backend = make_mock()
        return Target("mock", backend, True, backend.model)
    if request.param == "endpoint":
        model = MockModel(RULES)
        return Target("endpoint", _endpoint(model), True, model)
    if request.param == "server":
        if not _server_available():
            pytest.skip("the HTTP server (python -m runtime serve) is not there yet")
        backend = request.getfixturevalue("server_backend")
        backend.flush_cache()
        return Target("server", backend, False)
    if not _engine_available():
        pytest.skip("runtime.engine is not importable yet")
    backend = request.getfixturevalue("engine_backend")
    backend.flush_cache()
    return Target("engine", backend, False)
