"""Sampling parameters checked against the server's configured limits.

The engine's SamplingParams validates every value against fixed ceilings; the operator may set
tighter ones (`--max-n`, `--max-stop-strings`), which only the server knows to enforce.
"""

from __future__ import annotations

from typing import Optional, Union

from runtime.config import EngineConfig
from runtime.sampling_params import SamplingParams


def validate_sampling(raw: Optional[Union[dict, SamplingParams]], config: EngineConfig) -> SamplingParams:
    """SamplingParams from a client's dict; ValueError (naming the field) when invalid or over a limit."""
    params = SamplingParams.from_dict(raw)
    if params.n > config.max_n:
        raise ValueError(f"n must be <= {config.max_n} on this server, got {params.n}")
    if len(params.stop) > config.max_stop_strings:
        raise ValueError(f"stop has {len(params.stop)} strings; the limit is {config.max_stop_strings}")
    return params
