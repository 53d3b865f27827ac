"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from runtime.server.body import read_json_object
from runtime.server.encoding import JSONBytesResponse
from runtime.server.errors import engine_errors
from runtime.server.openai_params import Plan, chat_plan, chat_renames, completion_plan, completion_renames, render_chat
from runtime.server.openai_responses import ChatFormatter, CompletionFormatter
from runtime.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from runtime.server.state import ServerState, get_state
from runtime.server.streaming import ClientDisconnected, sse_response, until_disconnected

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> JSONBytesResponse:
    state = get_state(request)
    card = ModelCard(id=state.served_model_name, root=state.engine.config.model_path,
                     max_model_len=state.engine.context_len)
    return JSONBytesResponse(ModelList(data=[card]).model_dump())


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = get_state(request)
    req = CompletionRequest.model_validate(await read_json_object(request, state.max_body_bytes))
    with engine_errors(completion_renames()):
        plan = completion_plan(req, state.engine.config)
    formatter = CompletionFormatter(plan, f"cmpl-{uuid.uuid4().hex}", state.served_model_name,
                                    state.engine.tokenizer, _include_usage(req))
    return await _serve(request, state, plan, formatter, bool(req.stream))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = get_state(request)
    req = ChatCompletionRequest.model_validate(await read_json_object(request, state.max_body_bytes))
    engine = state.engine
    with engine_errors(chat_renames(req)):
        # NOTE: on the event loop thread, where the engine encodes prompts too: HF fast tokenizers
        # must not encode from two threads at once.
        prompt_ids = render_chat(engine.tokenizer, req.messages)
        plan = chat_plan(req, engine.config, prompt_ids, room=min(engine.context_len, engine.max_total_tokens))
    formatter = ChatFormatter(plan, f"chatcmpl-{uuid.uuid4().hex}", state.served_model_name,
                              engine.tokenizer, _include_usage(req))
    return await _serve(request, state, plan, formatter, bool(req.stream))


async def _serve(request: Request, state: ServerState, plan: Plan, formatter, stream: bool) -> Response:
    ticket = state.gate.admit(plan.num_choices)
    if stream:
        return await sse_response(state, plan.stream_calls(), ticket, plan.renames, formatter.on_event,
                                  tail=lambda: [c for c in [formatter.usage_chunk()] if c is not None])
    with ticket, engine_errors(plan.renames), state.tracking(plan.choice_rids()):
        try:
            result = await until_disconnected(request, state.engine.async_generate(**plan.batch_call()))
        except ClientDisconnected:
            return Response(status_code=499)
    results = result if isinstance(result, list) else [result]
    for item in results:
        state.metrics.observe_finished(item["meta_info"], streamed=False)
    return JSONBytesResponse(formatter.response(results))


def _include_usage(req) -> bool:
    return bool(req.stream and req.stream_options and req.stream_options.include_usage)
