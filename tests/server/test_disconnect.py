"""A client that goes away mid-request aborts its engine request and frees its KV slots at once.

The proof that work stopped (rather than ran to the end unobserved) is the engine's count of
generated tokens: a hung-up request must not go on to produce its max_new_tokens.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import assert_pool_whole, running_server, server_stats
from tests.server.scripted_model import SCRIPT_TEXT

LONG = 480  # tokens a hung-up request would produce if nobody stopped it
SHORT = 22


@pytest.fixture(scope="module")
def server(scripted_model):
    with running_server(scripted_model) as served:
        yield served


async def _stream(client: httpx.AsyncClient, url: str, path: str, body: dict, hang_up: bool) -> str:
    """Read an SSE stream to the end, or hang up after the first event."""
    text = ""
    async with client.stream("POST", url + path, json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = line
            if hang_up:
                break  # leaving the block closes the connection
    return text


def _body(path: str, max_tokens: int) -> dict:
    if path == "/generate":
        return {"text": "Hello", "stream": True, "sampling_params": {"max_new_tokens": max_tokens, "ignore_eos": True}}
    return {"model": "m", "prompt": "Hello", "stream": True, "max_tokens": max_tokens, "ignore_eos": True}


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_half_of_16_streaming_clients_hang_up_and_their_requests_stop(server, path):
    before = server_stats(server)["generation_tokens"]

    async def main():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
            return await asyncio.gather(*(
                _stream(client, server.url, path, _body(path, LONG if i % 2 else SHORT), hang_up=bool(i % 2))
                for i in range(16)
            ))

    results = asyncio.run(main())
    stats = assert_pool_whole(server, timeout=5.0)
    finished = [r for i, r in enumerate(results) if i % 2 == 0]
    assert all(r for r in finished)
    if path == "/generate":  # the readers got their whole text: the script twice
        assert all(f'"text":"{SCRIPT_TEXT * 2}"' in r for r in finished), finished[0]
    generated = stats["generation_tokens"] - before
    assert generated >= 8 * SHORT
    assert generated < 8 * SHORT + 8 * LONG // 2, f"hung-up requests kept generating: {generated} tokens"


def test_a_non_streamed_request_whose_client_times_out_is_aborted(server):
    before = server_stats(server)["generation_tokens"]
    body = {"text": "Hello", "sampling_params": {"max_new_tokens": LONG, "ignore_eos": True}}

    async def main():
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=0.15)) as client:
            for _ in range(4):
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(server.url + "/generate", json=body)

    asyncio.run(main())
    stats = assert_pool_whole(server, timeout=5.0)
    generated = stats["generation_tokens"] - before
    assert generated < 4 * LONG // 2, f"abandoned requests kept generating: {generated} tokens"
