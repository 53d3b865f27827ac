"""The CLI (`python -m runtime serve`) as a real process: flags from the config, loopback bind,
API-key auth, and SIGTERM: drain, exit 0, nothing left behind."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import openai
import pytest

from runtime.config import EngineConfig
from runtime.server.launch import build_parser, engine_kwargs
from tests.server.conftest import running_server, sse_events
from tests.server.scripted_model import SCRIPT_TEXT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = "test-key-0123"


# ------------------------------------------------------------------------------------------ flags
def test_help_lists_every_engine_option_with_its_default():
    text = " ".join(build_parser().format_help().split())  # unwrap argparse's line breaks
    for f in dataclasses.fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if f.type != "bool" and f.default is not None:
            assert f"(default: {f.default})" in text, (flag, f.default)
    assert "--model MODEL_PATH" in text and "--host HOST" in text and "(default: 127.0.0.1)" in text


def test_flags_parse_into_engine_config_values():
    args = build_parser().parse_args(
        ["--model", "/m", "--disable-radix-cache", "--max-n", "4", "--context-length", "256",
         "--schedule-policy", "lpm", "--grammar-compile-timeout", "2.5"])
    kwargs = engine_kwargs(args)
    config = EngineConfig(**kwargs)
    assert (config.model_path, config.disable_radix_cache, config.max_n) == ("/m", True, 4)
    assert (config.context_length, config.schedule_policy, config.grammar_compile_timeout) == (256, "lpm", 2.5)
    assert EngineConfig(**engine_kwargs(build_parser().parse_args([]))) == EngineConfig()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--schedule-policy", "random"])


# ------------------------------------------------------------------------------------------- auth
def test_api_key_guards_every_route_but_health(scripted_model):
    with running_server(scripted_model, api_key=KEY) as served:
        url = served.url
        assert httpx.get(url + "/health").status_code == 200
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/get_server_info"),
                             ("POST", "/generate"), ("POST", "/flush_cache"), ("GET", "/no/such/route")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
                response = httpx.request(method, url + path, headers=headers, json={"text": "Hi"})
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["type"] == "authentication_error"
        good = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/v1/models", headers=good).status_code == 200
        assert httpx.post(url + "/generate", headers=good, json={"text": "Hi"}).json()["text"] == SCRIPT_TEXT
        assert served.openai().completions.create(model="m", prompt="Hi", max_tokens=3).choices[0].text == "caf"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_without_api_key_no_header_is_needed(scripted_model):
    with running_server(scripted_model) as served:
        assert httpx.get(served.url + "/v1/models").status_code == 200
        assert httpx.post(served.url + "/generate", json={"text": "Hi"}).status_code == 200


# ---------------------------------------------------------------------------------------- process
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(model: str, port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runtime", "serve", "--model", model, "--port", str(port), "--device", "cpu",
           "--dtype", "float32", "--max-total-tokens", "4096", "--log-level", "warning", *extra]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # NOTE: a file, not a pipe: nobody reads a pipe while the server runs, and a full one would block it
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {_log(proc)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not come up")


def _log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")[-3000:]


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.append(address)
    return found


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            kids.extend(int(k) for k in fh.read().split())
    return kids


def _wait_in_flight(url: str, count: int, headers: dict) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(url + "/get_server_info", headers=headers).json()["in_flight"] < count:
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)


def _stream_in_thread(url: str, body: dict, headers: dict, out: list) -> threading.Thread:
    def run():
        try:
            with httpx.stream("POST", url + "/generate", json=body, headers=headers, timeout=60) as response:
                out.append(sse_events(response.iter_lines()))
        except httpx.HTTPError as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_cli_binds_loopback_and_sigterm_lets_requests_finish_then_exits_0(scripted_model):
    port = _free_port()
    proc = _launch(scripted_model, port, "--api-key", KEY, "--shutdown-grace", "20")
    try:
        assert _listening_addresses(port) == ["0100007F"]  # 127.0.0.1, and nothing on IPv6
        assert _children(proc.pid) == []
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        body = {"text": "Hello", "stream": True, "sampling_params": {"max_new_tokens": 440, "ignore_eos": True}}
        out: list = []
        thread = _stream_in_thread(f"http://127.0.0.1:{port}", body, headers, out)
        _wait_in_flight(f"http://127.0.0.1:{port}", 1, headers)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, _log(proc)
        thread.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = out[0]
    assert not isinstance(events, Exception), events
    assert events[-1] == "[DONE]"
    assert events[-2]["text"] == SCRIPT_TEXT * 40 and events[-2]["meta_info"]["finish_reason"]["type"] == "length"
    assert _listening_addresses(port) == []


def test_sigterm_aborts_what_is_still_running_after_the_grace_period_and_streams_end_cleanly(scripted_model):
    port = _free_port()
    proc = _launch(scripted_model, port, "--shutdown-grace", "0.5", "--max-running-requests", "1")
    body = {"text": "Hello", "stream": True, "sampling_params": {"max_new_tokens": 480, "ignore_eos": True}}
    outs: list = []
    threads = [_stream_in_thread(f"http://127.0.0.1:{port}", body, {}, outs) for _ in range(12)]
    try:
        _wait_in_flight(f"http://127.0.0.1:{port}", 12, {})
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, _log(proc)
        elapsed = time.monotonic() - start
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(outs) == 12
    assert all(isinstance(o, list) and o[-1] == "[DONE]" for o in outs), outs  # every stream ended cleanly
    reasons = [o[-2]["meta_info"]["finish_reason"]["type"] for o in outs]
    assert set(reasons) <= {"length", "abort"}
    assert "abort" in reasons, "12 serial 480-token requests cannot all finish within a 0.5 s grace"
    assert elapsed < 10, f"shutdown took {elapsed:.1f} s"
