"""JSON on the wire: compact UTF-8, never NaN/Infinity (strict parsers reject them), and SSE framing."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import Response

SSE_DONE = b"data: [DONE]\n\n"

# A masked token's logprob is -inf; strict JSON has no infinity, so send a large finite number
# (the value OpenAI itself uses).
_NEG_INF_LOGPROB = -9999.0


def dumps(obj: Any) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a non-finite float somewhere: rare, so only then walk the object
        text = json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def finite_logprob(value: float) -> float:
    if math.isnan(value):
        return _NEG_INF_LOGPROB
    return max(min(value, 0.0), _NEG_INF_LOGPROB)


class JSONBytesResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (_NEG_INF_LOGPROB if obj < 0 else -_NEG_INF_LOGPROB)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
