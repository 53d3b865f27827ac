"""Reading a request body from an untrusted client: bounded in size, a JSON object or a 4xx.

The size is checked twice: the declared Content-Length before reading anything, and the bytes
actually received (chunked uploads declare nothing), so a body over the limit is never buffered whole.
"""

from __future__ import annotations

import json

from starlette.requests import Request

from runtime.server.errors import APIError

DEFAULT_MAX_BODY_BYTES = 16 * 2**20


async def read_json_object(request: Request, max_bytes: int) -> dict:
    """The body parsed as a JSON object; APIError 413 past `max_bytes`, 400 if not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, f"invalid Content-Length header: {declared!r}")
        if int(declared) > max_bytes:
            raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise APIError(400, f"malformed JSON body: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_json_type(data)}")
    return data


def _too_large(size: int, max_bytes: int) -> APIError:
    return APIError(413, f"request body of {size}+ bytes exceeds the limit of {max_bytes} bytes", param="body")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _json_type(value) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
