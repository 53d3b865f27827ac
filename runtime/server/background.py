"""An app served from a background thread of this process: for tests and notebooks.

    with BackgroundServer(create_app(engine)) as server:
        httpx.get(server.url + "/health")

Binds 127.0.0.1 on a free port by default. Stopping drains like SIGTERM does (in-flight requests
may finish within `shutdown_grace` seconds, then are aborted); the engine is left to its owner.
"""

from __future__ import annotations

import threading
import time

from runtime.server.launch import DrainingServer


class BackgroundServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 shutdown_grace: float = 5.0, start_timeout: float = 30.0):
        self._server = DrainingServer(app, shutdown_grace, host=host, port=port, log_level=log_level)
        self._thread = threading.Thread(target=self._server.run, name="sgflow-http", daemon=True)
        self._start_timeout = start_timeout
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
