"""A stand-in for the sgflow HTTP server's native API, over the scripted MockModel, for testing
RuntimeEndpoint's HTTP handling (auth, errors, SSE with cumulative text) in-process."""

from __future__ import annotations

import json
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sgflow.backends.mock_model import MockModel


def create_app(model: MockModel, api_key: Optional[str] = None) -> FastAPI:
    app = FastAPI()

    def refused(request: Request) -> Optional[JSONResponse]:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return None

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/get_model_info")
    async def model_info(request: Request):
        return refused(request) or model.model_info()

    @app.post("/flush_cache")
    async def flush(request: Request):
        model.flush_cache()
        return refused(request) or {"ok": True}

    @app.post("/generate")
    async def generate(request: Request):
        if refused(request):
            return refused(request)
        body = await request.json()
        try:
            if not body.get("stream"):
                return model.generate(body)
            chunks = model.stream(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")

    return app


def _sse(chunks: list[dict]):
    text, ids = "", []
    for chunk in chunks:  # the real server sends cumulative text
        text += chunk["text"]
        ids += chunk["output_ids"]
        yield f"data: {json.dumps({'text': text, 'output_ids': ids, 'meta_info': chunk['meta_info']})}\n\n"
    yield "data: [DONE]\n\n"
