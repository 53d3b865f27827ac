"""HTTP backends: `RuntimeEndpoint(url, api_key=None)` talks to a running sgflow server's native
/generate; `Runtime(model_path=..., **engine options)` starts that server as a subprocess first.

Exact-token mode needs the model's tokenizer on this side: it is loaded from the server's
`model_path` when that directory exists locally (always true for `Runtime`), or from
`tokenizer_path`; otherwise prompts go as text.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, AsyncIterator, Optional

from sgflow.backends.native import NativeBackend
from sgflow.errors import BackendError
from sgflow.loop import run_sync
from sgflow.tokens import TokenizerAdapter


class RuntimeEndpoint(NativeBackend):
    def __init__(
        self,
        base_url: str,
        api_key: Optional[str] = None,
        *,
        chat_template: Optional[str] = None,
        tokenizer_path: Optional[str] = None,
        timeout: float = 600.0,
        transport: Any = None,  # an httpx async transport (tests, proxies)
    ):
        super().__init__(chat_template)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._timeout, self._transport = timeout, transport
        self._client: Any = None
        self.model_info = run_sync(self._request("GET", "/get_model_info"))
        self.model_path = self.model_info.get("model_path")
        self.hf_chat_template = self.model_info.get("chat_template")
        self._tokenizer = _local_tokenizer(tokenizer_path or self.model_path)

    @property
    def tokenizer(self) -> Optional[TokenizerAdapter]:
        return self._tokenizer

    # ------------------------------------------------------------------ transport
    def _http(self) -> Any:
        if self._client is None:  # created on the loop that uses it
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=headers, timeout=self._timeout, transport=self._transport
            )
        return self._client

    async def _request(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        response = await self._http().request(method, path, json=body)
        if response.status_code != 200:
            raise BackendError(f"{method} {path} -> HTTP {response.status_code}: {response.text}")
        return response.json()

    async def _call(self, payload: dict) -> dict:
        return await self._request("POST", "/generate", payload)

    async def _call_stream(self, payload: dict) -> AsyncIterator[dict]:
        """The server streams cumulative text (SSE); hand on only what is new."""
        shown_text, shown_ids = "", []
        async with self._http().stream("POST", "/generate", json=payload) as response:
            if response.status_code != 200:
                raise BackendError(f"POST /generate -> HTTP {response.status_code}: {(await response.aread()).decode()}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise BackendError(f"the server failed the stream: {event['error']}")
                text, ids = event.get("text", ""), list(event.get("output_ids") or [])
                new_ids = ids[len(shown_ids):] if ids[: len(shown_ids)] == shown_ids else ids
                yield {"text": text[len(shown_text):], "output_ids": new_ids, "meta_info": event.get("meta_info", {})}
                shown_text, shown_ids = text, shown_ids + new_ids

    # ------------------------------------------------------------------ control
    def flush_cache(self) -> bool:
        run_sync(self._request("POST", "/flush_cache"))
        return True

    def get_server_info(self) -> dict:
        try:
            return run_sync(self._request("GET", "/get_server_info"))
        except BackendError:
            return dict(self.model_info)

    def describe(self) -> str:
        return f"RuntimeEndpoint({self.base_url})"


class Runtime(RuntimeEndpoint):
    """Start `python -m runtime serve` for `model_path` and talk to it; stopped by shutdown(),
    on `with` exit, or at interpreter exit."""

    def __init__(self, model_path: Optional[str] = None, *, port: Optional[int] = None, host: str = "127.0.0.1", launch_timeout: float = 300.0, api_key: Optional[str] = None, chat_template: Optional[str] = None, **engine_options: Any):
        self.port = port or _free_port(host)
        command = [sys.executable, "-m", "runtime", "serve", "--host", host, "--port", str(self.port)]
        if model_path is not None:
            command += ["--model", model_path]
        if api_key:
            command += ["--api-key", api_key]
        command += _cli_flags(engine_options)
        self.process: Optional[subprocess.Popen] = subprocess.Popen(command, start_new_session=True)
        atexit.register(self.shutdown)
        url = f"http://{host}:{self.port}"
        try:
            _wait_healthy(url, self.process, launch_timeout)
            super().__init__(url, api_key, chat_template=chat_template)
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        process, self.process = getattr(self, "process", None), None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _cli_flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BackendError(f"the server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise BackendError(f"the server at {url} was not healthy within {timeout:.0f} s")


def _local_tokenizer(path: Optional[str]) -> Optional[TokenizerAdapter]:
    if not path or not os.path.isdir(path):
        return None
    try:
        from transformers import AutoTokenizer

        return TokenizerAdapter(AutoTokenizer.from_pretrained(path))
    except Exception:  # no usable tokenizer here: fall back to sending text
        return None
