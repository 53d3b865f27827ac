"""The one sampling-parameters dataclass: used by Engine.generate, the HTTP server and the language.

This module imports nothing heavy (no torch) so that the language (`sgflow`) can use it without the
runtime's GPU stack. Validation happens once, here, and every error names the field and its range.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Union

# Limits that protect the server; the server can tighten them from its config.
MAX_STOP_STRINGS = 32
MAX_N = 64


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request. `temperature == 0` means greedy.

    Constraint fields (`regex`, `json_schema`, `choices`) are mutually exclusive; they are compiled
    by `runtime.constrained` into a token-level grammar.
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: all tokens
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False  # keep the matched stop string in the returned text
    n: int = 1
    seed: Optional[int] = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None  # a JSON Schema document, serialised
    choices: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        # Normalise containers first (frozen: go through object.__setattr__ only here, at birth).
        for name in ("stop", "stop_token_ids", "choices"):
            value = getattr(self, name)
            if value is None and name == "choices":
                continue
            if value is None:
                value = ()
            elif isinstance(value, (str, int)):
                value = (value,)
            elif isinstance(value, (list, tuple)):
                value = tuple(value)
            else:
                raise ValueError(f"{name} must be a list, got {type(value).__name__}")
            object.__setattr__(self, name, value)
        if isinstance(self.json_schema, dict):
            object.__setattr__(self, "json_schema", json.dumps(self.json_schema))
        if isinstance(self.regex, str) and type(self.regex) is not str:
            object.__setattr__(self, "regex", str(self.regex))  # str subclasses (named library regexes)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(str(c) if isinstance(c, str) else c for c in self.choices))
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Optional[Union[dict, "SamplingParams"]]) -> "SamplingParams":
        """Build from a user dict; unknown keys raise ValueError naming them."""
        if data is None:
            return cls()
        if isinstance(data, SamplingParams):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"sampling_params must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown sampling parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:  # defensive: wrong call shape
            raise ValueError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("stop", "stop_token_ids", "choices"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived
    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_constraint(self) -> bool:
        return self.regex is not None or self.json_schema is not None or self.choices is not None

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, low=0)
        _check_int("min_new_tokens", self.min_new_tokens, low=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens ({self.max_new_tokens})"
            )
        _check_float("temperature", self.temperature, low=0.0, high=100.0)
        _check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _check_int("top_k", self.top_k, low=-1)
        if self.top_k == 0:
            raise ValueError("top_k must be -1 (disabled) or >= 1, got 0")
        _check_float("min_p", self.min_p, low=0.0, high=1.0)
        _check_float("repetition_penalty", self.repetition_penalty, low=0.0, high=10.0, low_open=True)
        _check_float("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        _check_float("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_int("n", self.n, low=1, high=MAX_N)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)
        for name in ("ignore_eos", "skip_special_tokens", "no_stop_trim"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop has {len(self.stop)} strings; the limit is {MAX_STOP_STRINGS}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must hold non-empty strings, got {s!r}")
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, low=0)
        constraints = [n for n in ("regex", "json_schema", "choices") if getattr(self, n) is not None]
        if len(constraints) > 1:
            raise ValueError(f"at most one of regex, json_schema, choices may be set; got {constraints}")
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError(f"regex must be a string, got {type(self.regex).__name__}")
        if self.json_schema is not None and not isinstance(self.json_schema, str):
            raise ValueError("json_schema must be a JSON string or an object")
        if self.choices is not None:
            if not self.choices or not all(isinstance(c, str) and c for c in self.choices):
                raise ValueError("choices must be a non-empty list of non-empty strings")


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_float(
    name: str, value: Any, low: float, high: float, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be in {left}{low}, {high}], got {value}")
