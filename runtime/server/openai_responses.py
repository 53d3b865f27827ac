"""Engine results → OpenAI responses and stream chunks, for /v1/completions and /v1/chat/completions.

A formatter serves one request: `response(results)` for the non-streamed answer, or, streaming,
`on_event(index, chunk)` per engine chunk (→ zero or more chunk objects) and `usage_chunk()`.
Streaming rules: every choice ends with exactly one chunk carrying its finish_reason; a chunk whose
text is still empty (half a UTF-8 character is held back by the engine) is not sent, and the
logprobs of its tokens ride on the next chunk that is.
"""

from __future__ import annotations

from typing import Optional

from runtime.server.encoding import finite_logprob
from runtime.server.openai_params import Plan
from runtime.server.protocol import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatLogprobs,
    CompletionChoice, CompletionLogprobs, CompletionResponse, DeltaMessage, TokenLogprob, TopLogprob, UsageInfo,
)


def finish_reason(meta: dict) -> Optional[str]:
    """OpenAI's finish_reason: "stop" (EOS, stop string or token), "length", or "abort" (cancelled)."""
    reason = meta.get("finish_reason")
    return None if reason is None else reason["type"]


def usage(metas: list[dict], n: int) -> UsageInfo:
    """Prompt tokens count once per prompt (not per copy), as OpenAI counts them."""
    prompt = sum(m["prompt_tokens"] for m in metas[::n])
    completion = sum(m["completion_tokens"] for m in metas)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class _Formatter:
    def __init__(self, plan: Plan, request_id: str, model: str, tokenizer, include_usage: bool = False):
        self.plan, self.id, self.model, self.tokenizer = plan, request_id, model, tokenizer
        self.include_usage = include_usage
        num = plan.num_choices
        self._num_ids = [0] * num  # output ids received per choice
        self._num_logprobs = [0] * num  # of those, ids whose logprobs were sent
        self._started = [False] * num
        self._final: list[Optional[dict]] = [None] * num

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _new_entries(self, index: int, meta: dict) -> tuple[list, list]:
        """(token logprobs, top logprobs) of the ids received but not yet sent, for choice `index`."""
        lo, hi = self._num_logprobs[index], self._num_ids[index]
        self._num_logprobs[index] = hi
        tops = meta.get("output_top_logprobs") or []
        return list(meta.get("output_token_logprobs", [])[lo:hi]), list(tops[lo:hi])

    def _note(self, index: int, chunk: dict) -> tuple[Optional[str], bool]:
        """Record a chunk; (finish_reason or None, whether this is the choice's first chunk)."""
        self._num_ids[index] += len(chunk["output_ids"])
        reason = finish_reason(chunk["meta_info"])
        if reason is not None:
            self._final[index] = chunk["meta_info"]
        first = not self._started[index]
        return reason, first

    def usage_chunk(self) -> Optional[dict]:
        if not self.include_usage:
            return None
        return self._chunk([], usage(self._final, self.plan.n))


class CompletionFormatter(_Formatter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._text_offset = [0] * self.plan.num_choices  # streamed: where the next token's text starts

    def echo_text(self, prompt_index: int) -> str:
        if not self.plan.echo:
            return ""
        prompt = self.plan.prompts[prompt_index]
        return prompt["prompt"] if "prompt" in prompt else self.tokenizer.decode(prompt["input_ids"])

    def response(self, results: list[dict]) -> dict:
        choices = []
        for index, result in enumerate(results):
            echo = self.echo_text(index // self.plan.n)
            meta = result["meta_info"]
            logprobs = None
            if self.plan.return_logprob:
                tokens, tops = list(meta["output_token_logprobs"]), list(meta.get("output_top_logprobs") or [])
                if self.plan.echo:
                    tokens = list(meta["input_token_logprobs"]) + tokens
                    tops = list(meta.get("input_top_logprobs") or []) + tops
                logprobs = self._logprobs(tokens, tops, 0)
            choices.append(CompletionChoice(index=index, text=echo + result["text"], logprobs=logprobs,
                                            finish_reason=finish_reason(meta)))
        metas = [r["meta_info"] for r in results]
        return CompletionResponse(id=self.id, model=self.model, choices=choices, usage=usage(metas, self.plan.n)).model_dump()

    def on_event(self, index: int, chunk: dict) -> list[dict]:
        reason, first = self._note(index, chunk)
        text = chunk["text"]
        if first:
            text = self.echo_text(index // self.plan.n) + text
        if not text and reason is None:
            return []
        self._started[index] = True
        logprobs = None
        if self.plan.return_logprob:
            tokens, tops = self._new_entries(index, chunk["meta_info"])
            if first and self.plan.echo:
                meta = chunk["meta_info"]
                tokens = list(meta["input_token_logprobs"]) + tokens
                tops = list(meta.get("input_top_logprobs") or []) + tops
            logprobs = self._logprobs(tokens, tops, self._text_offset[index])
            self._text_offset[index] += sum(len(t) for t in logprobs.tokens)
        return [self._chunk([CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=reason)])]

    def _chunk(self, choices: list, usage_info: Optional[UsageInfo] = None) -> dict:
        return CompletionResponse(id=self.id, model=self.model, choices=choices, usage=usage_info).model_dump()

    def _logprobs(self, tokens: list, tops: list, offset: int) -> CompletionLogprobs:
        texts = [self._token_text(t[1]) for t in tokens]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        top = None
        if self.plan.top_logprobs_num > 0:
            top = [None if entry is None else self._top_dict(entry) for entry in tops]
        return CompletionLogprobs(
            tokens=texts,
            token_logprobs=[None if t[0] is None else finite_logprob(t[0]) for t in tokens],
            top_logprobs=top,
            text_offset=offsets,
        )


    def _top_dict(self, entry: list) -> dict[str, float]:
        # NOTE: distinct ids can decode to the same text (partial UTF-8 bytes all read "\ufffd");
        # the dict keeps the most likely one, as entries come best first.
        out: dict[str, float] = {}
        for lp, token_id, _ in entry:
            out.setdefault(self._token_text(token_id), finite_logprob(lp))
        return out


class ChatFormatter(_Formatter):
    def response(self, results: list[dict]) -> dict:
        choices = []
        for index, result in enumerate(results):
            meta = result["meta_info"]
            logprobs = None
            if self.plan.return_logprob:
                logprobs = self._logprobs(meta["output_token_logprobs"], meta.get("output_top_logprobs") or [])
            choices.append(ChatChoice(index=index, message=AssistantMessage(content=result["text"]),
                                      logprobs=logprobs, finish_reason=finish_reason(meta)))
        metas = [r["meta_info"] for r in results]
        return ChatCompletionResponse(id=self.id, model=self.model, choices=choices, usage=usage(metas, self.plan.n)).model_dump()

    def on_event(self, index: int, chunk: dict) -> list[dict]:
        reason, first = self._note(index, chunk)
        out = []
        if first:  # OpenAI opens each choice with the role
            self._started[index] = True
            out.append(self._chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))]))
        if chunk["text"]:
            logprobs = None
            if self.plan.return_logprob:
                logprobs = self._logprobs(*self._new_entries(index, chunk["meta_info"]))
            out.append(self._chunk([ChatChunkChoice(index=index, delta=DeltaMessage(content=chunk["text"]),
                                                    logprobs=logprobs)]))
        if reason is not None:
            logprobs = None
            if self.plan.return_logprob and self._num_logprobs[index] < self._num_ids[index]:
                logprobs = self._logprobs(*self._new_entries(index, chunk["meta_info"]))  # e.g. EOS: no text
            out.append(self._chunk([ChatChunkChoice(index=index, delta=DeltaMessage(), logprobs=logprobs,
                                                    finish_reason=reason)]))
        return out

    def _chunk(self, choices: list, usage_info: Optional[UsageInfo] = None) -> dict:
        out = ChatCompletionChunk(id=self.id, model=self.model, choices=choices, usage=usage_info).model_dump()
        for choice in out["choices"]:  # OpenAI sends only the delta fields that are set
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return out

    def _logprobs(self, tokens: list, tops: list) -> ChatLogprobs:
        content = []
        for k, (lp, token_id, _) in enumerate(tokens):
            alternatives = [self._top(a_lp, a_id) for a_lp, a_id, _ in (tops[k] if k < len(tops) and tops[k] else [])]
            entry = self._top(lp, token_id)
            content.append(TokenLogprob(token=entry.token, logprob=entry.logprob, bytes=entry.bytes,
                                        top_logprobs=alternatives))
        return ChatLogprobs(content=content)

    def _top(self, lp: float, token_id: int) -> TopLogprob:
        text = self._token_text(token_id)
        return TopLogprob(token=text, logprob=finite_logprob(lp), bytes=list(text.encode("utf-8")))
