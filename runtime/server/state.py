"""What every route needs: the engine and the server's own bookkeeping, one object per app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from runtime.server.admission import AdmissionGate
from runtime.server.metrics import ServerMetrics


@dataclass
class ServerState:
    engine: Any  # runtime.engine.Engine (not imported: the server package stays importable without torch)
    gate: AdmissionGate
    metrics: ServerMetrics
    served_model_name: str
    max_body_bytes: int
    server_args: dict  # shown by /get_server_info; never holds the API key

    def abort(self, rid: str) -> None:
        """Abort a client's request by its rid, including the `{rid}-{k}` copies of an n > 1 request
        (the engine's naming, which the server's stream fan-out follows)."""
        self.engine.abort(rid)
        for k in range(self.engine.config.max_n):
            self.engine.abort(f"{rid}-{k}")


def get_state(request: Request) -> ServerState:
    return request.app.state.server
