"""Counters the scheduler keeps for /metrics and benchmarks (read through Scheduler.call)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from runtime.request import Req


@dataclass
class SchedulerStats:
    num_requests: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_retractions: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generation_tokens: int = 0
    ttft_seconds: list[float] = field(default_factory=list)  # drained by the metrics exporter
    inter_token_seconds: list[float] = field(default_factory=list)
    _last_token_at: dict[str, float] = field(default_factory=dict)

    def on_arrival(self, req: Req) -> None:
        self.num_requests += 1
        self.prompt_tokens += len(req.origin_input_ids)

    def on_prefix_hit(self, req: Req) -> None:
        self.cached_prompt_tokens += req.cached_tokens

    def on_token(self, req: Req) -> None:
        self.generation_tokens += 1
        now = time.monotonic()
        last = self._last_token_at.get(req.rid)
        if last is None:
            self.ttft_seconds.append(now - req.created_at)
        else:
            self.inter_token_seconds.append(now - last)
        self._last_token_at[req.rid] = now

    def on_finish(self, req: Req) -> None:
        self._last_token_at.pop(req.rid, None)
        if req.finished_reason is not None and req.finished_reason.type == "abort":
            self.num_aborted += 1
        else:
            self.num_finished += 1

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def drain_latencies(self) -> tuple[list[float], list[float]]:
        ttft, itl = self.ttft_seconds, self.inter_token_seconds
        self.ttft_seconds, self.inter_token_seconds = [], []
        return ttft, itl
