"""Prometheus metrics for GET /metrics.

Two sources: the engine's own counters and gauges (read through `engine.get_stats()` at scrape
time, so they are never stale or double counted), and latencies the server measures itself:
time to first token and end-to-end latency from each finished request's meta_info, inter-token
latency from the gaps between streamed chunks (for a non-streamed request, its mean gap).
Each app has its own registry, so several servers can live in one process (tests).
"""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class EngineStatsCollector:
    """Turns one `get_stats()` snapshot into metric families at each scrape."""

    def __init__(self, get_stats: Callable[[], dict]):
        self._get_stats = get_stats

    def collect(self):
        s = self._get_stats()
        for name, key, doc in (
            ("sgflow_prompt_tokens", "prompt_tokens", "Prompt tokens received by the engine."),
            ("sgflow_cached_prompt_tokens", "cached_prompt_tokens", "Prompt tokens served from the prefix cache."),
            ("sgflow_generation_tokens", "generation_tokens", "Tokens generated."),
            ("sgflow_engine_requests", "num_requests", "Requests the engine has accepted."),
            ("sgflow_retractions", "num_retractions", "Requests retracted to free KV memory."),
        ):
            yield CounterMetricFamily(name, doc, value=s[key])
        total = max(s["kv_total"], 1)
        for name, value, doc in (
            ("sgflow_num_running_requests", s["num_running"], "Requests being decoded or prefilled."),
            ("sgflow_num_queued_requests", s["num_waiting"], "Requests waiting to be scheduled."),
            ("sgflow_cache_hit_rate", s["cache_hit_rate"], "Share of prompt tokens found in the prefix cache."),
            ("sgflow_kv_usage", (s["kv_total"] - s["kv_free"]) / total, "Share of KV slots not free."),
            ("sgflow_kv_cached_tokens", s["kv_cached"], "KV slots held by the prefix cache."),
            ("sgflow_kv_total_tokens", s["kv_total"], "KV pool size in tokens."),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


class ServerMetrics:
    def __init__(self, get_stats: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineStatsCollector(get_stats))
        self.http_requests = Counter(
            "sgflow_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.in_flight = Gauge("sgflow_in_flight_requests", "Engine requests held by the server.", registry=self.registry)
        self.ttft = Histogram(
            "sgflow_time_to_first_token_seconds", "Time to first token.", buckets=_TTFT_BUCKETS, registry=self.registry
        )
        self.inter_token = Histogram(
            "sgflow_inter_token_latency_seconds", "Time between output tokens.", buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "sgflow_e2e_request_latency_seconds", "Request latency in the engine.", buckets=_E2E_BUCKETS,
            registry=self.registry,
        )

    def observe_finished(self, meta_info: dict, streamed: bool) -> None:
        """Record a finished engine request (non-streamed ones also record their mean token gap)."""
        ttft = meta_info.get("ttft")
        if ttft is not None:
            self.ttft.observe(ttft)
        e2e = meta_info.get("e2e_latency")
        if e2e is not None:
            self.e2e.observe(e2e)
        tokens = meta_info.get("completion_tokens", 0)
        if not streamed and ttft is not None and e2e is not None and tokens > 1:
            mean_gap = max(e2e - ttft, 0.0) / (tokens - 1)
            for _ in range(tokens - 1):
                self.inter_token.observe(mean_gap)

    def render(self) -> bytes:
        """The Prometheus text exposition; blocks on the engine (call it off the event loop)."""
        return generate_latest(self.registry)


class TokenGapTimer:
    """Measures inter-token gaps of one streamed request from the arrival times of its chunks."""

    def __init__(self, metrics: ServerMetrics):
        self._metrics = metrics
        self._last = None

    def on_tokens(self, num_new: int) -> None:
        now = time.monotonic()
        if num_new <= 0:
            return
        if self._last is not None:
            gap = (now - self._last) / num_new  # several tokens in one chunk: spread the gap evenly
            for _ in range(num_new):
                self._metrics.inter_token.observe(gap)
        self._last = now


class HTTPCountMiddleware:
    """Counts responses by route and status (unknown paths collapse into one label)."""

    def __init__(self, app, metrics: ServerMetrics, routes: Callable[[], set]):
        self.app = app
        self._metrics = metrics
        self._routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in self._routes() else "other"

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self._metrics.http_requests.labels(route=route, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
