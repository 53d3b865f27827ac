"""`OpenAI(model_name, base_url=..., api_key=...)`: programs on any OpenAI-compatible API.

Chat models generate only as the assistant, from the finished messages. The API cannot enforce
regex / JSON-schema / choices constraints, so the interpreter refuses them here. `select` scores
choices with completions + echo + logprobs where the model allows it; otherwise (chat models, or
servers without echo) it generates and matches the output to a choice, and warns that it does.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import Any, AsyncIterator, Optional, Sequence

from runtime.sampling_params import SamplingParams

from sgflow.backends.base import BaseBackend, GenChunk, GenResult, Prompt, SelectResult
from sgflow.chat_template import ChatTemplate, get_chat_template
from sgflow.choices import ChoicesSamplingMethod, ChoiceScores
from sgflow.errors import ProgramMisuseError

_DEFAULTS = SamplingParams()
_MATCH_TOKENS = 32  # tokens generated when select falls back to generating


class OpenAI(BaseBackend):
    def __init__(self, model_name: str, base_url: Optional[str] = None, api_key: Optional[str] = None, *, is_chat_model: Optional[bool] = None, chat_template: Optional[str] = None, **client_kwargs: Any):
        import openai

        self.model_name = model_name
        self.is_chat_model = True if is_chat_model is None else is_chat_model
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client_args = {"base_url": base_url, "api_key": key, **client_kwargs}
        self._openai = openai
        self._client: Any = None
        self._template = get_chat_template(chat_template or "default")
        self._warned: set[str] = set()

    def get_chat_template(self) -> ChatTemplate:
        return self._template

    def _api(self) -> Any:
        if self._client is None:  # created on the loop that uses it
            self._client = self._openai.AsyncOpenAI(**self._client_args)
        return self._client

    # ------------------------------------------------------------------ generate
    async def generate(self, prompt: Prompt, params: SamplingParams, options: dict) -> GenResult:
        request = self._request(prompt, params, options)
        if self.is_chat_model:
            response = await self._api().chat.completions.create(**request)
            choice = response.choices[0]
            text = choice.message.content or ""
        else:
            response = await self._api().completions.create(**request)
            choice = response.choices[0]
            text = choice.text
        return GenResult(text, None, _meta(response, choice.finish_reason))

    async def stream(self, prompt: Prompt, params: SamplingParams, options: dict) -> AsyncIterator[GenChunk]:
        chunks = await (self._api().chat.completions if self.is_chat_model else self._api().completions).create(
            **self._request(prompt, params, options), stream=True
        )
        async for chunk in chunks:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text = (choice.delta.content or "") if self.is_chat_model else (choice.text or "")
            meta = _meta(chunk, choice.finish_reason) if choice.finish_reason else {}
            yield GenChunk(text, None, meta)

    def _request(self, prompt: Prompt, params: SamplingParams, options: dict) -> dict:
        unsent = [f for f in ("top_k", "min_p", "repetition_penalty", "min_new_tokens", "stop_token_ids", "ignore_eos")
                  if getattr(params, f) != getattr(_DEFAULTS, f)]
        unsent += [k for k in ("return_logprob", "top_logprobs_num") if options.get(k)]
        if unsent:
            self._warn_once(f"unsent:{unsent}", f"the OpenAI API has no {unsent}; they are not sent")
        request: dict[str, Any] = {"model": self.model_name, "max_tokens": params.max_new_tokens,
                                   "temperature": params.temperature, "top_p": params.top_p}
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(params, name) != 0.0:
                request[name] = getattr(params, name)
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if self.is_chat_model:
            request["messages"] = _chat_messages(prompt)
        else:
            request["prompt"] = prompt.text
        return request

    # ------------------------------------------------------------------ select
    async def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesSamplingMethod) -> SelectResult:
        if not self.is_chat_model:
            try:
                return await self._select_by_echo(prompt, choices, method)
            except Exception as exc:  # the server has no echo/logprobs: say so, then fall back
                reason = f"this server cannot score prompts with echo+logprobs ({type(exc).__name__}: {exc})"
        else:
            reason = "chat completions cannot score given text"
        self._warn_once("select", f"OpenAI backend: {reason}; select generates and matches a choice instead")
        return await self._select_by_generation(prompt, choices)

    async def _select_by_echo(self, prompt: Prompt, choices: Sequence[str], method: ChoicesSamplingMethod) -> SelectResult:
        conditional = await asyncio.gather(*(self._echo_logprobs(prompt.text, c) for c in choices))
        unconditional = None
        if method.requires_unconditional_logprobs:
            unconditional = tuple(await asyncio.gather(*(self._echo_logprobs("", c) for c in choices)))
        decision = method.decide(ChoiceScores(tuple(choices), tuple(conditional), unconditional))
        return SelectResult(decision.decision, None, decision.meta_info)

    async def _echo_logprobs(self, prefix: str, choice: str) -> tuple:
        response = await self._api().completions.create(
            model=self.model_name, prompt=prefix + choice, max_tokens=1, echo=True, logprobs=1, temperature=0.0
        )
        lp = response.choices[0].logprobs
        # Tokens overlapping the choice (one may straddle the join with the prefix).
        entries = tuple(
            (value, None, token)
            for token, value, offset in zip(lp.tokens, lp.token_logprobs, lp.text_offset)
            if offset + len(token) > len(prefix) and offset < len(prefix) + len(choice)
        )
        if not entries:
            raise ValueError("the echoed logprobs do not cover the choice")
        return entries

    async def _select_by_generation(self, prompt: Prompt, choices: Sequence[str]) -> SelectResult:
        params = SamplingParams(max_new_tokens=_MATCH_TOKENS, temperature=0.0)
        result = await self.generate(prompt, params, {})
        said = result.text.strip()
        overlap = [_common_prefix(said, c.strip()) for c in choices]
        exact = [i for i, c in enumerate(choices) if said.startswith(c.strip())]
        best = max(exact, key=lambda i: len(choices[i])) if exact else max(range(len(choices)), key=lambda i: (overlap[i], -i))
        meta = {"method": "generate_and_match", "choices": list(choices), "scores": overlap,
                "generated": result.text, **{k: v for k, v in result.meta_info.items() if k.endswith("tokens")}}
        return SelectResult(choices[best], None, meta)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)

    def describe(self) -> str:
        return f"OpenAI({self.model_name})"


def _chat_messages(prompt: Prompt) -> list[dict]:
    if prompt.role != "assistant":
        raise ProgramMisuseError(
            "a chat model generates only as the assistant: write s += sgflow.assistant(sgflow.gen(...))"
        )
    if prompt.role_text.strip():
        raise ProgramMisuseError(
            "the chat API cannot continue a half-written assistant message: put gen(...)/select(...) "
            "first in the assistant turn, or use a completion model (is_chat_model=False)"
        )
    return [dict(m) for m in prompt.messages]


def _meta(response: Any, reason: Optional[str]) -> dict:
    usage = getattr(response, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "id": getattr(response, "id", None),
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "cached_tokens": getattr(details, "cached_tokens", 0) or 0,
        "finish_reason": {"type": reason or "unknown"},
    }


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
