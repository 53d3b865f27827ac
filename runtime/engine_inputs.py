"""Turn Engine.generate's arguments into validated per-request inputs.

Single or batch, text or token ids, per-item or shared options, `n` copies: everything is checked
here, before anything reaches the scheduler, and every error names the field and the limit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Optional

import torch

from runtime.sampling_params import SamplingParams


@dataclass(frozen=True)
class GenerateInput:
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool
    logprob_start_len: int
    top_logprobs_num: int
    stream: bool

    def make_generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.sampling_params.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.sampling_params.seed)


def _per_item(value: Any, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return value
    return [value] * count


def normalize_inputs(
    engine,
    *,
    stream: bool,
    prompt=None,
    sampling_params=None,
    input_ids=None,
    return_logprob=False,
    logprob_start_len=-1,
    top_logprobs_num=0,
    rid=None,
) -> list[GenerateInput]:
    if (prompt is None) == (input_ids is None):
        raise ValueError("give exactly one of prompt (text) or input_ids")
    if prompt is not None:
        texts = prompt if isinstance(prompt, list) else [prompt]
        if not texts:
            raise ValueError("prompt is an empty list")
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"prompt must be a string or a list of strings, got {type(t).__name__}")
            if not t:
                raise ValueError("prompt is empty")
        id_lists = [engine.tokenizer.encode(t) for t in texts]
    else:
        if not isinstance(input_ids, list) or not input_ids:
            raise ValueError("input_ids must be a non-empty list of token ids (or a list of such lists)")
        id_lists = input_ids if isinstance(input_ids[0], list) else [input_ids]
    count = len(id_lists)
    params = [SamplingParams.from_dict(p) for p in _per_item(sampling_params, count, "sampling_params")]
    for p in params:  # the configured limits may be tighter than the dataclass's hard ones
        if p.n > engine.config.max_n:
            raise ValueError(f"n must be <= {engine.config.max_n}, got {p.n}")
        if len(p.stop) > engine.config.max_stop_strings:
            raise ValueError(f"stop has {len(p.stop)} strings; the limit is {engine.config.max_stop_strings}")
    logprob = _per_item(return_logprob, count, "return_logprob")
    start = _per_item(logprob_start_len, count, "logprob_start_len")
    top = _per_item(top_logprobs_num, count, "top_logprobs_num")
    rids = _per_item(rid, count, "rid") if isinstance(rid, list) else [rid] * count
    out = []
    for i, ids in enumerate(id_lists):
        _check_ids(ids, engine.runner.vocab_size)
        _check_lengths(len(ids), params[i], engine)
        _check_logprob_args(logprob[i], start[i], top[i], len(ids), engine.runner.vocab_size)
        base_rid = rids[i] if rids[i] is not None else uuid.uuid4().hex
        for k in range(params[i].n):
            p = params[i]
            if p.n > 1:
                seed = None if p.seed is None else p.seed + k
                p = p.replace(n=1, seed=seed)
            out.append(
                GenerateInput(
                    rid=base_rid if params[i].n == 1 else f"{base_rid}-{k}",
                    input_ids=list(ids),
                    sampling_params=p,
                    return_logprob=bool(logprob[i]),
                    logprob_start_len=int(start[i]),
                    top_logprobs_num=int(top[i]),
                    stream=stream,
                )
            )
    return out


def _check_ids(ids: list, vocab_size: int) -> None:
    if not ids:
        raise ValueError("input_ids is empty")
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise ValueError(f"input_ids must hold integers, got {t!r}")
        if not 0 <= t < vocab_size:
            raise ValueError(f"input_ids holds token id {t} outside the vocabulary [0, {vocab_size})")


def _check_lengths(prompt_len: int, params: SamplingParams, engine) -> None:
    context = engine.context_len
    total = prompt_len + params.max_new_tokens
    if prompt_len >= context:
        raise ValueError(f"the prompt has {prompt_len} tokens; the context length is {context}")
    if total > context:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({params.max_new_tokens}) = {total} "
            f"exceeds the context length {context}"
        )
    if total > engine.max_total_tokens:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({params.max_new_tokens}) = {total} "
            f"exceeds the KV pool ({engine.max_total_tokens} tokens)"
        )


def _check_logprob_args(return_logprob: Any, start: Any, top: Any, prompt_len: int, vocab_size: int) -> None:
    if not isinstance(return_logprob, bool):
        raise ValueError(f"return_logprob must be a boolean, got {return_logprob!r}")
    if isinstance(start, bool) or not isinstance(start, int) or not -1 <= start < prompt_len:
        raise ValueError(f"logprob_start_len must be -1 or in [0, {prompt_len}), got {start!r}")
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= min(vocab_size, 100):
        raise ValueError(f"top_logprobs_num must be in [0, {min(vocab_size, 100)}], got {top!r}")
