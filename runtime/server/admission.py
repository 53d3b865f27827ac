"""Admission control: refuse work the engine cannot queue, instead of letting requests pile up.

The server counts the engine requests it holds (one HTTP request with a batch of 3 prompts and
n=2 holds 6). Past `limit` (the engine's running + queued capacity) or while the server drains for
shutdown, new requests get 503 with Retry-After. The count is exact because every admission is
released exactly once, by whoever finishes the HTTP response (see Ticket).
"""

from __future__ import annotations

from runtime.server.errors import APIError

RETRY_AFTER_SECONDS = 1


class Ticket:
    """Holds `cost` admissions until released; releasing twice is a no-op."""

    def __init__(self, gate: "AdmissionGate", cost: int):
        self._gate = gate
        self.cost = cost
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.in_flight -= self.cost

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class AdmissionGate:
    """Used only from the event loop thread, so the counter needs no lock."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.draining = False

    def admit(self, cost: int = 1) -> Ticket:
        """A ticket for `cost` engine requests, or APIError 503 (with Retry-After) when full or draining."""
        if self.draining:
            raise APIError(503, "the server is shutting down", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if self.in_flight + cost > self.limit:
            raise APIError(
                503,
                f"the server is overloaded: {self.in_flight} requests in flight, limit {self.limit}; retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.in_flight += cost
        return Ticket(self, cost)

    def start_draining(self) -> None:
        self.draining = True
