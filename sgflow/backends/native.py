"""The runtime's native protocol, shared by the in-process Engine, the HTTP server and the mock.

Request:  {"text" | "input_ids", "sampling_params", "return_logprob", "logprob_start_len",
           "top_logprobs_num"}
Response: {"text", "output_ids", "meta_info": {prompt_tokens, completion_tokens, cached_tokens,
           finish_reason, input_token_logprobs, output_token_logprobs, ...}}
Subclasses only move payloads (`_call`, `_call_stream`); building requests, scoring `select`
choices from prompt logprobs and caching prefixes is written once, here.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Any, AsyncIterator, Optional, Sequence

from runtime.sampling_params import SamplingParams

from sgflow.backends.base import CONSTRAINTS, BaseBackend, GenChunk, GenResult, Prompt, SelectResult
from sgflow.chat_template import ChatTemplate, chat_template_for_model, get_chat_template
from sgflow.choices import ChoicesSamplingMethod, ChoiceScores

_DEFAULTS = SamplingParams().to_dict()
_REQUEST_KEYS = ("return_logprob", "logprob_start_len", "top_logprobs_num")
_LOGPROB_KEYS = ("input_token_logprobs", "output_token_logprobs")


class NativeBackend(BaseBackend):
    supported_constraints = frozenset(CONSTRAINTS)  # the runtime rejects what it cannot do yet

    def __init__(self, chat_template: Optional[str] = None):
        self._chat_template_name = chat_template
        self.model_path: Optional[str] = None
        self.hf_chat_template: Optional[str] = None

    # ------------------------------------------------------------------ transport (subclasses)
    @abstractmethod
    async def _call(self, payload: dict) -> dict:
        """Send one native request, return the response object; raise on failure."""

    @abstractmethod
    def _call_stream(self, payload: dict) -> AsyncIterator[dict]:
        """Send one streaming request; yield chunks holding only the text/ids added since the last."""

    # ------------------------------------------------------------------ contract
    def get_chat_template(self) -> ChatTemplate:
        if self._chat_template_name:
            return get_chat_template(self._chat_template_name)
        return chat_template_for_model(self.model_path, self.hf_chat_template)

    async def generate(self, prompt: Prompt, params: SamplingParams, options: dict) -> GenResult:
        out = await self._call(self._payload(prompt, params, options))
        return GenResult(out["text"], out.get("output_ids"), self._meta(out, options))

    async def stream(self, prompt: Prompt, params: SamplingParams, options: dict) -> AsyncIterator[GenChunk]:
        async for chunk in self._call_stream({**self._payload(prompt, params, options), "stream": True}):
            yield GenChunk(chunk.get("text", ""), chunk.get("output_ids"), self._meta(chunk, options))

    async def cache_prefix(self, prompt: Prompt) -> dict:
        out = await self._call(self._payload(prompt, SamplingParams(max_new_tokens=0), {}))
        return out.get("meta_info", {})

    async def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesSamplingMethod) -> SelectResult:
        """Score each choice by the prompt logprobs of its tokens after the shared prefix.

        Exact-token mode: the choice is appended as its own tokens, so the prefix boundary is
        exact. Text mode: the prefix's token count comes from caching it first."""
        cached = await self.cache_prefix(prompt)  # the scoring requests below all reuse it
        tok = self.tokenizer if prompt.input_ids is not None else None
        if tok is not None:
            start = len(prompt.input_ids)
            choice_ids = [tok.encode(c, add_special_tokens=False) for c in choices]
            inputs = [{"input_ids": list(prompt.input_ids) + ids} for ids in choice_ids]
        else:
            start = int(cached.get("prompt_tokens") or 0)
            inputs = [{"text": prompt.text + c} for c in choices]
        outs = await asyncio.gather(*(self._call(_scoring(i, start)) for i in inputs))
        conditional = tuple(tuple(tuple(e) for e in o["meta_info"]["input_token_logprobs"]) for o in outs)
        if tok is None:
            choice_ids = [[e[1] for e in entries] for entries in conditional]
        unconditional = None
        if method.requires_unconditional_logprobs:
            outs_u = await asyncio.gather(*(self._call(_scoring({"input_ids": list(ids)}, 0)) for ids in choice_ids))
            unconditional = tuple(tuple(tuple(e) for e in o["meta_info"]["input_token_logprobs"]) for o in outs_u)
            outs = list(outs) + list(outs_u)
        decision = method.decide(ChoiceScores(tuple(choices), conditional, unconditional))
        index = list(choices).index(decision.decision)
        meta = dict(decision.meta_info)
        meta["prompt_tokens"] = sum(o["meta_info"].get("prompt_tokens", 0) for o in outs)
        meta["cached_tokens"] = sum(o["meta_info"].get("cached_tokens", 0) for o in outs)
        meta["completion_tokens"] = 0
        return SelectResult(decision.decision, list(choice_ids[index]) if tok is not None else None, meta)

    # ------------------------------------------------------------------ helpers
    def _payload(self, prompt: Prompt, params: SamplingParams, options: dict) -> dict:
        changed = {k: v for k, v in params.to_dict().items() if v != _DEFAULTS[k]}
        body: dict[str, Any] = {"sampling_params": changed}
        if prompt.input_ids is not None:
            body["input_ids"] = list(prompt.input_ids)
        else:
            body["text"] = prompt.text
        body.update({k: options[k] for k in _REQUEST_KEYS if options.get(k) is not None})
        return body

    def _meta(self, out: dict, options: dict) -> dict:
        meta = dict(out.get("meta_info") or {})
        tok = self.tokenizer
        if options.get("return_text_in_logprobs") and tok is not None:
            for key in _LOGPROB_KEYS:
                if meta.get(key):
                    meta[key] = [(e[0], e[1], tok.decode([e[1]])) for e in meta[key]]
        return meta


def _scoring(inputs: dict, start: int) -> dict:
    return {
        **inputs,
        "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
        "return_logprob": True,
        "logprob_start_len": start,
    }
