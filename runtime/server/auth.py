"""API-key check: with a key configured, every route but /health needs `Authorization: Bearer KEY`.

A pure ASGI middleware, so the check runs before any body is read or any route is resolved (an
unauthenticated client learns nothing, not even which paths exist). The comparison is constant-time.
"""

from __future__ import annotations

import hmac
import json
from typing import Optional

OPEN_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    def __init__(self, app, api_key: Optional[str]):
        self.app = app
        self._key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if self._key is None or scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self._authorized(scope):
            return await self.app(scope, receive, send)
        await _send_401(send)

    def _authorized(self, scope) -> bool:
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        # NOTE: compare even when the scheme is wrong, so timing does not reveal which check failed.
        match = hmac.compare_digest(token.strip(), self._key)
        return match and scheme.lower() == b"bearer"


async def _send_401(send) -> None:
    body = json.dumps(
        {"error": {"message": "missing or invalid API key (send 'Authorization: Bearer <key>')",
                   "type": "authentication_error", "param": None, "code": 401}}
    ).encode()
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"),
        ],
    })
    await send({"type": "http.response.body", "body": body})
