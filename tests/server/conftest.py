"""Servers for the HTTP tests: a real uvicorn on 127.0.0.1 (in a thread of this process, for speed;
test_launch.py starts the real CLI as a subprocess) over a real Engine on a tiny CPU model."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import httpx
import pytest

from tests.server.scripted_model import build_scripted_model

ENGINE_DEFAULTS = dict(device="cpu", dtype="float32", max_total_tokens=8192)


@dataclass
class Served:
    url: str
    engine: object
    api_key: Optional[str] = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0, timeout=60)


@contextlib.contextmanager
def running_server(model_dir: str, *, api_key: Optional[str] = None, app_kwargs: Optional[dict] = None,
                   **engine_kwargs) -> Iterator[Served]:
    """Engine + app + uvicorn thread; on exit the KV pool must be whole."""
    from runtime import Engine
    from runtime.server.app import create_app
    from runtime.server.background import BackgroundServer

    engine = Engine(model_path=model_dir, **{**ENGINE_DEFAULTS, **engine_kwargs})
    try:
        app = create_app(engine, api_key=api_key, **(app_kwargs or {}))
        with BackgroundServer(app) as server:
            served = Served(server.url, engine, api_key)
            yield served
            assert_pool_whole(served)
        engine.check_integrity()
    finally:
        engine.shutdown()


def server_stats(served: Served) -> dict:
    response = httpx.get(served.url + "/get_server_info", headers=served.headers, timeout=30)
    response.raise_for_status()
    return response.json()["stats"]


def assert_pool_whole(served: Served, timeout: float = 10.0) -> dict:
    """Wait until nothing runs or waits, then assert every KV slot is free or cached."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server_stats(served)
        idle = stats["num_running"] == 0 and stats["num_waiting"] == 0
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert idle, f"requests still running long after their clients finished: {stats}"
    assert stats["kv_free"] + stats["kv_cached"] == stats["kv_total"], f"KV slots leaked: {stats}"
    served.engine.check_integrity()
    return stats


def sse_events(lines) -> list:
    """The JSON payloads of an SSE stream, up to and including the [DONE] marker (as the string)."""
    import json

    events = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture(scope="session")
def random_model(tiny_model_dir) -> str:
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def scripted_model(random_model, tmp_path_factory) -> str:
    """Greedy (and sampled) output from any plain prompt: SCRIPT_TEXT, then EOS."""
    return build_scripted_model(random_model, str(tmp_path_factory.mktemp("scripted")))
