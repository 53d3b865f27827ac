"""SGLang's native routes: /generate, health, model and server info, cache flush, abort, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from fastapi import APIRouter, Request
from fastapi.responses import Response

from runtime.server.admission import Ticket
from runtime.server.body import read_json_object
from runtime.server.encoding import JSONBytesResponse
from runtime.server.errors import APIError, engine_errors
from runtime.server.limits import validate_sampling
from runtime.server.metrics import CONTENT_TYPE
from runtime.server.protocol import AbortRequest, GenerateRequest
from runtime.server.state import ServerState, get_state
from runtime.server.streaming import ClientDisconnected, sse_response, until_disconnected

router = APIRouter()

HEALTH_GENERATE_TIMEOUT_S = 20.0
# The engine calls the input `prompt`; native clients send `text`.
RENAMES = {"prompt": "text"}


@router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """200 once the engine has produced a token for a one-token prompt, else 503."""
    state = get_state(request)
    probe = state.engine.tokenizer.bos_token_id or 0
    with state.gate.admit(1), engine_errors(RENAMES):
        try:
            await asyncio.wait_for(
                state.engine.async_generate(input_ids=[probe], sampling_params={"max_new_tokens": 1, "temperature": 0.0}),
                timeout=HEALTH_GENERATE_TIMEOUT_S,
            )
        except asyncio.TimeoutError:
            raise APIError(503, f"no token generated within {HEALTH_GENERATE_TIMEOUT_S:.0f} s") from None
    return Response(status_code=200)


@router.get("/get_model_info")
async def get_model_info(request: Request) -> JSONBytesResponse:
    state = get_state(request)
    info = state.engine.get_model_info()
    return JSONBytesResponse({**info, "served_model_name": state.served_model_name, "is_generation": True})


@router.get("/get_server_info")
async def get_server_info(request: Request) -> JSONBytesResponse:
    """The engine config, server options (never the API key) and live stats: `kv_free + kv_cached ==
    kv_total` with nothing running means no KV slot has leaked."""
    state = get_state(request)
    stats = await asyncio.to_thread(state.engine.get_stats)
    return JSONBytesResponse({
        "engine_config": dataclasses.asdict(state.engine.config),
        "server_args": state.server_args,
        "stats": stats,
        "in_flight": state.gate.in_flight,
        "draining": state.gate.draining,
    })


@router.post("/flush_cache")
async def flush_cache(request: Request) -> JSONBytesResponse:
    state = get_state(request)
    if not await asyncio.to_thread(state.engine.flush_cache):
        raise APIError(409, "the cache cannot be flushed while requests are running or waiting; retry when idle")
    return JSONBytesResponse({"success": True, "message": "prefix cache flushed"})


@router.post("/abort_request")
async def abort_request(request: Request) -> JSONBytesResponse:
    state = get_state(request)
    req = AbortRequest.model_validate(await read_json_object(request, state.max_body_bytes))
    state.abort(req.rid)
    return JSONBytesResponse({"success": True})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = get_state(request)
    state.metrics.in_flight.set(state.gate.in_flight)
    return Response(await asyncio.to_thread(state.metrics.render), media_type=CONTENT_TYPE)


@router.post("/generate")
async def generate(request: Request) -> Response:
    state = get_state(request)
    req = GenerateRequest.model_validate(await read_json_object(request, state.max_body_bytes))
    count = _num_prompts(req)
    with engine_errors(RENAMES):
        if (req.text is None) == (req.input_ids is None):
            raise ValueError("give exactly one of text or input_ids")
        if count == 0:
            raise ValueError("text / input_ids is an empty list")
        params = [validate_sampling(p, state.engine.config) for p in _per_prompt(req.sampling_params, count, "sampling_params")]
        if req.stream and count > 1 and isinstance(req.rid, str):
            raise ValueError("rid must be a list with one rid per prompt when streaming a batch")
        bases = _base_rids(req.rid, count)
        calls = _stream_calls(req, params, bases) if req.stream else None
    ticket = state.gate.admit(max(sum(p.n for p in params), 1))
    if calls is not None:
        return await _stream(state, calls, ticket)
    batch = _is_batch(req)
    with ticket, engine_errors(RENAMES), state.tracking(_copy_rids(bases, params)):
        work = state.engine.async_generate(
            prompt=req.text,
            input_ids=req.input_ids,
            sampling_params=params if batch else params[0],
            return_logprob=req.return_logprob,
            logprob_start_len=req.logprob_start_len,
            top_logprobs_num=req.top_logprobs_num,
            rid=bases if batch else bases[0],
        )
        try:
            result = await until_disconnected(request, work)
        except ClientDisconnected:
            return Response(status_code=499)
    for item in result if isinstance(result, list) else [result]:
        state.metrics.observe_finished(item["meta_info"], streamed=False)
    return JSONBytesResponse(result)


async def _stream(state: ServerState, calls: list[dict], ticket: Ticket) -> Response:
    """SSE: each event is the response object so far (text and output_ids cumulative), then [DONE].
    A batch or n > 1 streams every choice, each event tagged with its `index`."""
    text, ids = [""] * len(calls), [[] for _ in calls]

    def render(index: int, chunk: dict):
        text[index] += chunk["text"]
        ids[index].extend(chunk["output_ids"])
        event = {"text": text[index], "output_ids": list(ids[index]),
                 "meta_info": _meta_so_far(chunk["meta_info"], len(ids[index]))}
        if len(calls) > 1:
            event["index"] = index
        return [event]

    return await sse_response(state, calls, ticket, RENAMES, render)


def _base_rids(rid, count: int) -> list[str]:
    """One rid per prompt: the client's (a shared string is shared, as the engine does), else fresh."""
    if isinstance(rid, list):
        if len(rid) != count:
            raise ValueError(f"rid has {len(rid)} entries for {count} prompts")
        return rid
    if rid is not None:
        return [rid] * count
    return [uuid.uuid4().hex for _ in range(count)]


def _copy_rids(bases: list[str], params: list) -> list[str]:
    """The engine's names for the copies of an n > 1 request: `{rid}-{k}` (runtime/engine_inputs.py)."""
    return [base if p.n == 1 else f"{base}-{k}" for base, p in zip(bases, params) for k in range(p.n)]


def _stream_calls(req: GenerateRequest, params: list, bases: list[str]) -> list[dict]:
    """One single-prompt, n=1 engine call per choice, named and seeded as the engine names and seeds
    the copies of an n > 1 request (`{rid}-{k}`, seed + k), so streamed == non-streamed."""
    count = len(params)
    logprob = _per_prompt(req.return_logprob, count, "return_logprob")
    start = _per_prompt(req.logprob_start_len, count, "logprob_start_len")
    top = _per_prompt(req.top_logprobs_num, count, "top_logprobs_num")
    rids = iter(_copy_rids(bases, params))
    calls = []
    for i, p in enumerate(params):
        for k in range(p.n):
            calls.append({
                **_prompt_of(req, i),
                "sampling_params": p if p.n == 1 else p.replace(n=1, seed=None if p.seed is None else p.seed + k),
                "return_logprob": logprob[i],
                "logprob_start_len": start[i],
                "top_logprobs_num": top[i],
                "rid": next(rids),
            })
    return calls


def _meta_so_far(meta: dict, num_ids: int) -> dict:
    # NOTE: the engine's logprob lists keep growing on the scheduler thread after an event is sent;
    # cut them to the tokens this event has delivered so the event is self-consistent.
    out = dict(meta)
    for key in ("output_token_logprobs", "output_top_logprobs"):
        if key in out:
            out[key] = list(out[key][:num_ids])
    return out


def _is_batch(req: GenerateRequest) -> bool:
    return isinstance(req.text, list) or bool(req.input_ids and isinstance(req.input_ids[0], list))


def _num_prompts(req: GenerateRequest) -> int:
    if isinstance(req.text, list):
        return len(req.text)
    if req.input_ids and isinstance(req.input_ids[0], list):
        return len(req.input_ids)
    return 1


def _prompt_of(req: GenerateRequest, i: int) -> dict:
    if req.text is not None:
        return {"prompt": req.text[i] if isinstance(req.text, list) else req.text}
    if req.input_ids and isinstance(req.input_ids[0], list):
        return {"input_ids": req.input_ids[i]}
    return {"input_ids": req.input_ids}


def _per_prompt(value, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return value
    return [value] * count
