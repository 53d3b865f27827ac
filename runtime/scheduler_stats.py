"""Counters the scheduler keeps for /metrics and benchmarks (read through Scheduler.call)."""

from __future__ import annotations

from dataclasses import dataclass

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
    num_extend_steps: int = 0
    extend_tokens: int = 0  # prompt tokens computed (cache hits excluded)
    num_decode_steps: int = 0
    decode_rows: int = 0  # sum of decode batch sizes: / num_decode_steps = the mean batch

    def on_extend_step(self, num_tokens: int) -> None:
        self.num_extend_steps += 1
        self.extend_tokens += num_tokens

    def on_decode_step(self, batch_size: int) -> None:
        self.num_decode_steps += 1
        self.decode_rows += batch_size

    def on_arrival(self, req: Req) -> None:
        self.num_requests += 1
        self.prompt_tokens += len(req.origin_input_ids)

    def on_prefix_hit(self, req: Req) -> None:
        self.cached_prompt_tokens += req.cached_tokens

    def on_token(self, req: Req) -> None:
        # NOTE: latency histograms live in the server (it sees when text reaches the client)
        self.generation_tokens += 1

    def on_finish(self, req: Req) -> None:
        if req.finished_reason is not None and req.finished_reason.type == "abort":
            self.num_aborted += 1
        else:
            self.num_finished += 1

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
