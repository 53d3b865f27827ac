"""Program-level metrics: one record per model call, summed by `ProgramState.get_meta_info()`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class CallRecord:
    kind: str  # "gen" | "select" | "cache_prefix"
    name: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency: float  # seconds, measured by the frontend around the call
    branch: str = ""  # "" for the program itself; "1" for its second fork, "1.0" for that fork's first, ...

    @classmethod
    def from_meta(cls, kind: str, name: Optional[str], meta: dict, latency: float) -> "CallRecord":
        return cls(
            kind,
            name,
            int(meta.get("prompt_tokens") or 0),
            int(meta.get("completion_tokens") or 0),
            int(meta.get("cached_tokens") or 0),
            latency,
        )


def summarize(calls: list[CallRecord]) -> dict:
    prompt = sum(c.prompt_tokens for c in calls)
    cached = sum(c.cached_tokens for c in calls)
    return {
        "num_calls": len(calls),
        "prompt_tokens": prompt,
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "cached_tokens": cached,
        "cache_hit_rate": cached / prompt if prompt else 0.0,
        "latency": sum(c.latency for c in calls),
        "calls": [asdict(c) for c in calls],
    }
