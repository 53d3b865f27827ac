"""The HTTP app: native and OpenAI routes over one in-process Engine.

    app = create_app(engine, api_key="secret")      # serve with uvicorn (see launch.py)

The app does not own the engine: whoever created the engine shuts it down (launch.main does, after
the server has drained). Middleware order, outermost first: request counting (so 401s are counted
too), then the API-key check, then the routes.
"""

from __future__ import annotations

import os
from typing import Optional

from fastapi import FastAPI

from runtime.server.admission import AdmissionGate
from runtime.server.auth import APIKeyMiddleware
from runtime.server.body import DEFAULT_MAX_BODY_BYTES
from runtime.server.errors import install_error_handlers
from runtime.server.metrics import HTTPCountMiddleware, ServerMetrics
from runtime.server.native_routes import router as native_router
from runtime.server.openai_routes import router as openai_router
from runtime.server.state import ServerState


def create_app(
    engine,
    *,
    api_key: Optional[str] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    served_model_name: Optional[str] = None,
    server_args: Optional[dict] = None,
) -> FastAPI:
    """A FastAPI app serving `engine`. Requests beyond the engine's running + queued capacity get 503."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    config = engine.config
    app = FastAPI(title="sgflow runtime", docs_url=None, redoc_url=None, openapi_url=None)
    state = ServerState(
        engine=engine,
        gate=AdmissionGate(config.max_running_requests + config.max_queued_requests),
        metrics=ServerMetrics(engine.get_stats),
        served_model_name=served_model_name or _default_model_name(config.model_path),
        max_body_bytes=max_body_bytes,
        server_args={**(server_args or {}), "max_body_bytes": max_body_bytes, "api_key_required": bool(api_key)},
    )
    app.state.server = state
    app.include_router(native_router)
    app.include_router(openai_router)
    install_error_handlers(app)
    app.add_middleware(APIKeyMiddleware, api_key=api_key)
    route_paths = {route.path for router in (native_router, openai_router) for route in router.routes}
    app.add_middleware(HTTPCountMiddleware, metrics=state.metrics, routes=lambda: route_paths)
    return app


def _default_model_name(model_path: Optional[str]) -> str:
    if not model_path:
        return "default"
    return os.path.basename(os.path.normpath(model_path)) or model_path
