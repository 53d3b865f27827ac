"""`python -m runtime serve --model PATH [...]` / `sgflow serve`: build the engine, serve it over HTTP.

One process: uvicorn's event loop in the main thread and the engine's scheduler thread; nothing else
listens and nothing is pickled. The default bind is 127.0.0.1.

Shutdown (SIGTERM or SIGINT): stop accepting connections and refuse new requests (503), let the
requests in flight finish for up to --shutdown-grace seconds, then abort them in the engine (streams
end with finish_reason "abort" and [DONE]), shut the engine down and exit 0. A second SIGINT forces
an immediate exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import typing
from typing import Optional, Sequence

import uvicorn

from runtime.config import EngineConfig
from runtime.server.body import DEFAULT_MAX_BODY_BYTES

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
DEFAULT_SHUTDOWN_GRACE_S = 10.0
ABORT_SETTLE_S = 5.0  # after aborting, how long streams get to send their last event before being cut


def build_parser(prog: str = "python -m runtime serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a model over HTTP: native /generate and an OpenAI-compatible /v1 API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=DEFAULT_HOST, help="Address to bind; 0.0.0.0 exposes the server to the network.")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help="Port to bind.")
    server.add_argument("--api-key", default=None,
                        help="Require 'Authorization: Bearer KEY' on every route but /health (env: SGFLOW_API_KEY).")
    server.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="Largest request body accepted; larger ones get 413.")
    server.add_argument("--served-model-name", default=None,
                        help="Model id shown by /v1/models and in responses; None: the model directory's name.")
    server.add_argument("--shutdown-grace", type=float, default=DEFAULT_SHUTDOWN_GRACE_S,
                        help="Seconds in-flight requests may take to finish on SIGTERM before they are aborted.")
    server.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="Log level.")
    add_engine_arguments(parser.add_argument_group("engine"))
    return parser


def add_engine_arguments(group) -> None:
    """One flag per EngineConfig field: help, choices and defaults come from the dataclass."""
    hints = typing.get_type_hints(EngineConfig)
    for f in dataclasses.fields(EngineConfig):
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name == "model_path":
            flags.append("--model")
        kind = _base_type(hints[f.name])
        kwargs = dict(dest=f.name, default=f.default, help=f.metadata.get("help", ""))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = list(f.metadata["choices"])
        group.add_argument(*flags, **kwargs)


def _base_type(hint) -> type:
    """int for Optional[int], and so on."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


class DrainingServer(uvicorn.Server):
    """uvicorn with the server's shutdown policy.

    On stop: new requests get 503 at once; requests in flight may finish within `grace` seconds;
    then they are aborted in the engine, so streams still end with a finish_reason and [DONE]
    (uvicorn's own cancellation, `ABORT_SETTLE_S` later, is only a backstop). Signals are handled
    here rather than by uvicorn, which re-raises SIGTERM after stopping: we exit with status 0.
    """

    def __init__(self, app, grace: float, **config_kwargs):
        config = uvicorn.Config(app, lifespan="off", timeout_graceful_shutdown=grace + ABORT_SETTLE_S, **config_kwargs)
        super().__init__(config)
        self.state = app.state.server
        self.grace = grace

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; a server in a thread is stopped via should_exit
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets=None) -> None:
        self.state.gate.start_draining()
        timer = asyncio.get_running_loop().call_later(self.grace, self._abort_in_flight)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _abort_in_flight(self) -> None:
        if self.state.live_rids:
            logger.warning("shutdown grace period over: aborting %d request(s)", len(self.state.live_rids))
            self.state.abort_all()


def engine_kwargs(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig)}


def server_args(args: argparse.Namespace) -> dict:
    return {"host": args.host, "port": args.port, "shutdown_grace": args.shutdown_grace,
            "served_model_name": args.served_model_name}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status (0 after a clean shutdown)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from runtime.engine import Engine
    from runtime.server.app import create_app

    try:
        engine = Engine(**engine_kwargs(args))
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    try:
        api_key = args.api_key or os.environ.get("SGFLOW_API_KEY") or None
        app = create_app(engine, api_key=api_key, max_body_bytes=args.max_body_bytes,
                         served_model_name=args.served_model_name, server_args=server_args(args))
        server = DrainingServer(app, args.shutdown_grace, host=args.host, port=args.port, log_level=args.log_level)
        server.run()
        if not server.started:
            return 1  # could not bind; uvicorn has logged why
    finally:
        engine.shutdown()
    logger.info("server stopped")
    return 0
