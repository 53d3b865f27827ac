"""What every route needs: the engine and the server's own bookkeeping, one object per app."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

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
    live_rids: set = field(default_factory=set)  # engine rids of every request in flight

    @contextlib.contextmanager
    def tracking(self, rids: Iterable[str]) -> Iterator[None]:
        """Count `rids` as in flight while the block runs (abort_all reaches them)."""
        rids = list(rids)
        self.live_rids.update(rids)
        try:
            yield
        finally:
            self.live_rids.difference_update(rids)

    def abort_all(self) -> None:
        """Abort every request in flight: streams end with finish_reason "abort" and [DONE], whole
        responses return what was generated. Used when the shutdown grace period runs out."""
        for rid in list(self.live_rids):
            self.engine.abort(rid)

    def abort(self, rid: str) -> None:
        """Abort a client's request by its rid, including the `{rid}-{k}` copies of an n > 1 request
        (the engine's naming, which the server's stream fan-out follows)."""
        self.engine.abort(rid)
        for k in range(self.engine.config.max_n):
            self.engine.abort(f"{rid}-{k}")


def get_state(request: Request) -> ServerState:
    return request.app.state.server
