"""Errors as OpenAI-shaped JSON bodies, on every route (native ones too, so clients parse one shape):

    {"error": {"message": str, "type": str, "param": str | null, "code": int}}

Validation errors come from two places: pydantic (the wire shape of a request) and the engine's
`ValueError`s (values: ranges, lengths, vocabulary). Both become a 400 whose message names the
field as the client spelled it (`max_tokens`, not the engine's `max_new_tokens`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator, Mapping, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    503: "overloaded_error",
}

# Field names an engine message may start with or mention; the first one found is the `param`.
_KNOWN_FIELDS = {f for f in SamplingParams.__dataclass_fields__} | {
    "prompt", "input_ids", "text", "sampling_params", "return_logprob", "logprob_start_len",
    "top_logprobs_num", "rid", "messages",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# pydantic names union members in `loc` ("list[int]", "str"): not fields the client wrote.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|dict|list|function-.*|.*\[.*\]|[A-Z]\w*)$")


class APIError(Exception):
    """An error with an HTTP status; raised anywhere in a route, rendered by the app's handler."""

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        type: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_value_error(exc: ValueError, renames: Optional[Mapping[str, str]] = None) -> APIError:
    """A 400 from an engine ValueError; `renames` maps engine field names to the client's names."""
    message = str(exc)
    for engine_name, client_name in (renames or {}).items():
        message = re.sub(rf"\b{re.escape(engine_name)}\b", client_name, message)
    if message.startswith("unknown") and ":" in message:
        # "unknown sampling parameter(s): foo, bar; known: ..." → the first offending name
        names = _WORD.findall(message.split(":", 1)[1])
        return APIError(400, message, param=names[0] if names else None)
    known = _KNOWN_FIELDS | set((renames or {}).values())
    param = next((w for w in _WORD.findall(message) if w in known), None)
    return APIError(400, message, param=param)


@contextlib.contextmanager
def engine_errors(renames: Optional[Mapping[str, str]] = None) -> Iterator[None]:
    """Around engine calls: ValueError → 400 naming the field; a shut-down engine → 503."""
    try:
        yield
    except ValueError as exc:
        raise from_value_error(exc, renames) from None
    except RuntimeError as exc:
        if "shut down" not in str(exc):
            raise
        raise APIError(503, "the server is shutting down", headers={"Retry-After": "1"}) from None


def from_validation_error(exc: ValidationError) -> APIError:
    """A 400 naming the offending field(s) of a request that does not fit its wire model."""
    errors = exc.errors()
    extra = [_loc_path(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        names = ", ".join(extra)
        return APIError(400, f"unsupported field(s): {names}", param=extra[0])
    first = errors[0]
    path = _loc_path(first["loc"]) or "body"
    return APIError(400, f"invalid '{path}': {first['msg']}", param=path)


def _loc_path(loc: tuple) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and _TYPE_TAG.match(p))]
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.to_response()

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return from_validation_error(exc).to_response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        path = _loc_path(tuple(first["loc"])) or "body"
        return APIError(400, f"invalid '{path}': {first['msg']}", param=path).to_response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None)).to_response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # NOTE: never echo internals (paths, tracebacks) to an untrusted client; the log has them.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error", type="server_error").to_response()
