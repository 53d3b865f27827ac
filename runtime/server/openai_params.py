"""OpenAI requests → engine calls. The OpenAI sampling fields map onto the engine's one SamplingParams
(validated there, once); only the spelling differs, and error messages are renamed back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Optional, Union

from runtime.config import EngineConfig
from runtime.sampling_params import SamplingParams
from runtime.server.limits import validate_sampling
from runtime.server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass
class Plan:
    """What to ask the engine for one OpenAI request. Choice `index` = prompt * n + copy."""

    prompts: list[dict]  # per prompt: {"prompt": str} or {"input_ids": [int]}
    params: SamplingParams
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logprob_start_len: int = -1
    echo: bool = False
    renames: dict = field(default_factory=dict)  # engine field name → the client's
    rids: list = field(default_factory=list)  # per prompt; filled in __post_init__

    def __post_init__(self) -> None:
        self.rids = [uuid.uuid4().hex for _ in self.prompts]

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.params.n

    def choice_rids(self) -> list[str]:
        """Engine rids in choice order; copies of an n > 1 request are named `{rid}-{k}` as the
        engine names them (runtime/engine_inputs.py), streamed or not."""
        return [rid if self.n == 1 else f"{rid}-{k}" for rid in self.rids for k in range(self.n)]

    def batch_call(self) -> dict:
        """`async_generate` kwargs for one non-streamed call; the engine expands `n` itself."""
        common = dict(sampling_params=self.params, return_logprob=self.return_logprob,
                      top_logprobs_num=self.top_logprobs_num, logprob_start_len=self.logprob_start_len)
        if len(self.prompts) == 1:
            return {**self.prompts[0], **common, "rid": self.rids[0]}
        key = "prompt" if "prompt" in self.prompts[0] else "input_ids"
        return {key: [p[key] for p in self.prompts], **common, "rid": list(self.rids)}

    def stream_calls(self) -> list[dict]:
        """One n=1 call per choice, seeded as the engine seeds the copies of an n > 1 request
        (seed + copy), so a streamed choice equals its non-streamed twin."""
        calls, rids = [], iter(self.choice_rids())
        for prompt in self.prompts:
            for k in range(self.n):
                seed = None if self.params.seed is None else self.params.seed + k
                calls.append({
                    **prompt,
                    "sampling_params": self.params.replace(n=1, seed=seed),
                    "return_logprob": self.return_logprob,
                    "top_logprobs_num": self.top_logprobs_num,
                    "logprob_start_len": self.logprob_start_len,
                    "rid": next(rids),
                })
        return calls


def completion_plan(req: CompletionRequest, config: EngineConfig) -> Plan:
    prompts = _completion_prompts(req.prompt)
    max_tokens = req.max_tokens if req.max_tokens is not None else DEFAULT_COMPLETION_MAX_TOKENS
    params = validate_sampling(_sampling_dict(req, max_tokens), config)
    if req.logprobs is not None:
        _check_top_logprobs("logprobs", req.logprobs)
    wants_logprobs = req.logprobs is not None
    return Plan(
        prompts=prompts,
        params=params,
        return_logprob=wants_logprobs,
        top_logprobs_num=req.logprobs or 0,
        logprob_start_len=0 if (req.echo and wants_logprobs) else -1,
        echo=bool(req.echo),
        renames=completion_renames(),
    )


def chat_plan(req: ChatCompletionRequest, config: EngineConfig, prompt_ids: list[int], room: int) -> Plan:
    """`prompt_ids`: the rendered conversation; `room`: tokens the engine can hold per request."""
    if req.max_tokens is not None and req.max_completion_tokens is not None and req.max_tokens != req.max_completion_tokens:
        raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = max(room - len(prompt_ids), 0)  # all the room left; an over-long prompt is reported by the engine
    params = validate_sampling(_sampling_dict(req, max_tokens), config)
    if req.top_logprobs is not None:
        _check_top_logprobs("top_logprobs", req.top_logprobs)
        if not req.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
    return Plan(
        prompts=[{"input_ids": prompt_ids}],
        params=params,
        return_logprob=bool(req.logprobs),
        top_logprobs_num=req.top_logprobs or 0,
        renames=chat_renames(req),
    )


def completion_renames() -> dict:
    return {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "input_ids": "prompt"}


def chat_renames(req: Optional[ChatCompletionRequest]) -> dict:
    uses_new_name = req is not None and req.max_completion_tokens is not None
    return {
        "max_new_tokens": "max_completion_tokens" if uses_new_name else "max_tokens",
        "min_new_tokens": "min_tokens",
        "input_ids": "messages",
        "prompt": "messages",
    }


def render_chat(tokenizer, messages: list[ChatMessage]) -> list[int]:
    """Token ids of the conversation through the model's own chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("messages cannot be used: this model has no chat template (use /v1/completions)")
    conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    try:
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # a template may raise on its own rules (e.g. roles must alternate)
        raise ValueError(f"messages could not be rendered by the chat template: {exc}") from None
    # NOTE: the template writes the special tokens (BOS, role markers) itself; adding them again
    # would double the BOS of Llama-style tokenizers.
    return tokenizer.encode(text, add_special_tokens=False)


def _completion_prompts(prompt: Union[str, list]) -> list[dict]:
    if isinstance(prompt, str):
        return [{"prompt": prompt}]
    if not prompt:
        raise ValueError("prompt is empty")
    if isinstance(prompt[0], str):
        return [{"prompt": p} for p in prompt]
    if isinstance(prompt[0], int):
        return [{"input_ids": prompt}]
    return [{"input_ids": p} for p in prompt]


def _sampling_dict(req: Union[CompletionRequest, ChatCompletionRequest], max_tokens: int) -> dict:
    raw = {
        "max_new_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "n": req.n,
        "stop": req.stop,
        "seed": req.seed,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty,
        "ignore_eos": req.ignore_eos,
        "min_new_tokens": req.min_tokens,
        "stop_token_ids": req.stop_token_ids,
        "regex": req.regex,
        "json_schema": _json_schema(req),
    }
    return {k: v for k, v in raw.items() if v is not None}


def _json_schema(req) -> Optional[Union[str, dict]]:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return req.json_schema
    if req.json_schema is not None:
        raise ValueError("send either response_format or json_schema, not both")
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or fmt.json_schema.json_schema is None:
        raise ValueError("response_format.json_schema.schema is required for type 'json_schema'")
    return fmt.json_schema.json_schema


def _check_top_logprobs(name: str, value: int) -> None:
    if not 0 <= value <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be in [0, {MAX_TOP_LOGPROBS}], got {value}")
