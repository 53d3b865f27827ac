"""A scripted, deterministic stand-in for the runtime, speaking its native protocol.

`MockModel.generate(payload)` takes the same request object as `Engine.generate` / POST /generate
and returns the same response shape: text, output_ids, meta_info with prompt/completion/cached
tokens, finish_reason and logprobs. Replies come from rules (the rule whose key occurs latest in
the prompt wins), stop strings / max_new_tokens / EOS are applied token by token, a prefix cache
over token ids reports cached_tokens, and constraints are checked against the script. Every
request is recorded in `calls`. Used by `MockBackend` and by the tests' fake HTTP server.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any, Callable, Optional, Union

from runtime.sampling_params import SamplingParams

BOS, EOS = 1, 2
SPECIALS = {"<bos>": BOS, "<eos>": EOS, "<|im_start|>": 3, "<|im_end|>": 4}
# Multi-character pieces. ".\n" and "\n\n" make re-tokenisation of "generated text + what follows"
# differ from the generated tokens, which is the drift exact-token mode avoids.
PIECES = (".\n", "\n\n", "Q:", "A:", "USER:", "ASSISTANT:", "SYSTEM:", " the", " is", "th", "in", "er", "on", "an")
_CHAR_BASE = 1000


class MockTokenizer:
    """Greedy longest-match over SPECIALS + PIECES + single characters; BOS with special tokens."""

    def __init__(self) -> None:
        self._piece_ids = {**SPECIALS, **{p: 10 + i for i, p in enumerate(PIECES)}}
        self._id_pieces = {v: k for k, v in self._piece_ids.items()}
        self._longest = max(len(p) for p in self._piece_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, i = ([BOS] if add_special_tokens else []), 0
        while i < len(text):
            for size in range(min(self._longest, len(text) - i), 1, -1):
                if text[i:i + size] in self._piece_ids:
                    ids.append(self._piece_ids[text[i:i + size]])
                    i += size
                    break
            else:
                ids.append(_CHAR_BASE + ord(text[i]))
                i += 1
        return ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        out = []
        for t in ids:
            if t in self._id_pieces:
                if not (skip_special_tokens and t in SPECIALS.values()):
                    out.append(self._id_pieces[t])
            else:
                out.append(chr(t - _CHAR_BASE))
        return "".join(out)


class MockScriptError(AssertionError):
    """The test's script contradicts the request (e.g. a scripted reply violates its regex)."""


Reply = Union[str, Callable[[str, SamplingParams], str]]


class MockModel:
    def __init__(
        self,
        rules: Optional[dict[str, Reply]] = None,
        *,
        default_reply: Reply = " ok",
        choice_logprobs: Optional[dict[str, list[float]]] = None,
        unconditional_logprobs: Optional[dict[str, list[float]]] = None,
        supported_constraints: tuple = ("regex", "json_schema", "choices"),
        model_path: str = "mock-model",
        chat_template: Optional[str] = None,
    ):
        self.rules = dict(rules or {})
        self.default_reply = default_reply
        self.choice_logprobs = dict(choice_logprobs or {})
        self.unconditional_logprobs = dict(unconditional_logprobs or {})
        self.supported_constraints = tuple(supported_constraints)
        self.model_path = model_path
        self.chat_template = chat_template
        self.tokenizer = MockTokenizer()
        self.calls: list[dict] = []
        self._cache: list[tuple[int, ...]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ protocol
    def generate(self, payload: dict) -> Any:
        """One request (or a batch, when text / input_ids is a list) -> response object(s)."""
        batch = payload.get("input_ids", payload.get("text"))
        if isinstance(batch, list) and batch and not isinstance(batch[0], int):
            key = "input_ids" if "input_ids" in payload else "text"
            return [self.generate({**payload, key: item}) for item in batch]
        ids, params = self._parse(payload)
        out_ids, text, finish = self._decode(ids, params)
        meta = self._meta(ids, out_ids, finish, payload)
        with self._lock:
            self.calls.append({"text": self.tokenizer.decode(ids, False), "input_ids": payload.get("input_ids"),
                               "sampling_params": params, "payload": payload, "meta_info": meta})
        return {"text": text, "output_ids": out_ids, "meta_info": meta}

    def stream(self, payload: dict) -> list[dict]:
        """The same request as increments: one chunk per output token, finish_reason on the last."""
        out = self.generate(payload)
        chunks, shown = [], 0
        for k in range(1, len(out["output_ids"]) + 1):
            upto = min(len(self.tokenizer.decode(out["output_ids"][:k])), len(out["text"]))
            chunks.append({"text": out["text"][shown:upto], "output_ids": out["output_ids"][k - 1:k],
                           "meta_info": {**out["meta_info"], "finish_reason": None}})
            shown = upto
        last = {"text": out["text"][shown:], "output_ids": [], "meta_info": out["meta_info"]}
        return chunks + [last]

    def flush_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def model_info(self) -> dict:
        return {"model_path": self.model_path, "chat_template": self.chat_template}

    # ------------------------------------------------------------------ steps
    def _parse(self, payload: dict) -> tuple[list[int], SamplingParams]:
        params = SamplingParams.from_dict(payload.get("sampling_params") or {})
        for name in ("regex", "json_schema", "choices"):
            if getattr(params, name) is not None and name not in self.supported_constraints:
                raise ValueError(f"{name} constraints are not supported by this runtime yet")
        if "input_ids" in payload:
            return list(payload["input_ids"]), params
        return self.tokenizer.encode(payload["text"], add_special_tokens=True), params

    def _decode(self, ids: list[int], params: SamplingParams) -> tuple[list[int], str, dict]:
        if params.max_new_tokens == 0:
            return [], "", {"type": "length", "length": 0}
        reply = self.reply_for(self.tokenizer.decode(ids, False), params)
        self._check_constraints(reply, params)
        planned = self.tokenizer.encode(reply, add_special_tokens=False)
        out: list[int] = []
        while len(out) < params.max_new_tokens:
            if not planned:
                if not params.ignore_eos:
                    out.append(EOS)
                    return out, self.tokenizer.decode(out), {"type": "stop", "matched": EOS}
                planned = self.tokenizer.encode(" ok", add_special_tokens=False)
            out.append(planned.pop(0))
            text = self.tokenizer.decode(out)
            if out[-1] in params.stop_token_ids:
                return out, self.tokenizer.decode(out[:-1]), {"type": "stop", "matched": out[-1]}
            hits = [(text.find(s), s) for s in params.stop if s in text]
            if hits:
                pos, stop = min(hits)
                kept = text[: pos + len(stop)] if params.no_stop_trim else text[:pos]
                return out, kept, {"type": "stop", "matched": stop}
        return out, self.tokenizer.decode(out), {"type": "length", "length": len(out)}

    def reply_for(self, prompt: str, params: SamplingParams) -> str:
        best, best_pos = self.default_reply, -1
        for key, reply in self.rules.items():
            pos = prompt.rfind(key)
            if pos > best_pos:
                best, best_pos = reply, pos
        return best(prompt, params) if callable(best) else best

    def _check_constraints(self, reply: str, params: SamplingParams) -> None:
        if params.regex is not None and not re.fullmatch(params.regex, reply):
            raise MockScriptError(f"scripted reply {reply!r} does not match regex {params.regex!r}")
        if params.json_schema is not None:
            import jsonschema

            jsonschema.validate(json.loads(reply), json.loads(params.json_schema))
        if params.choices is not None and reply not in params.choices:
            raise MockScriptError(f"scripted reply {reply!r} is not one of {params.choices}")

    def _meta(self, ids: list[int], out_ids: list[int], finish: dict, payload: dict) -> dict:
        with self._lock:
            cached = max((_common_prefix(ids, seq) for seq in self._cache), default=0)
            self._cache.append(tuple(ids) + tuple(out_ids))
        meta = {"id": uuid.uuid4().hex, "prompt_tokens": len(ids), "completion_tokens": len(out_ids),
                "cached_tokens": min(cached, len(ids)), "finish_reason": finish, "e2e_latency": 0.0}
        if payload.get("return_logprob"):
            start = payload.get("logprob_start_len")
            start = len(ids) if start is None or start < 0 else start
            meta["input_token_logprobs"] = self._prompt_logprobs(ids, start)
            meta["output_token_logprobs"] = [(-0.1, t, None) for t in out_ids]
        return meta

    def _prompt_logprobs(self, ids: list[int], start: int) -> list[tuple]:
        tail = self.tokenizer.decode(ids[start:], False)
        n = len(ids) - start
        if start == 0:
            values = self.unconditional_logprobs.get(tail, [-1.0] * n)
        elif tail in self.choice_logprobs:
            values = self.choice_logprobs[tail]
        else:
            prefix = self.tokenizer.decode(ids[:start], False)
            reply = self.reply_for(prefix, SamplingParams())
            good = tail.strip() and reply.strip().startswith(tail.strip())
            values = [-0.1 if good else -2.0] * n
        if len(values) != n:
            raise MockScriptError(f"{len(values)} scripted logprobs for {tail!r}, which has {n} tokens")
        return [(None if p == 0 else v, ids[p], None) for p, v in zip(range(start, len(ids)), values)]


def _common_prefix(a: list[int], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
