"""After a token is appended: detokenize, check stops, and emit output events to the request's owner.

Events are plain dicts (they cross threads, and later sockets, without pickling):
    {"rid", "text" (new text since the last event), "output_ids" (new ids), "finished": bool,
     "meta_info": {...}}   — meta_info is complete on the finishing event.
"""

from __future__ import annotations

import time
from typing import Optional

from runtime.request import FinishReason, Req
from runtime.tokenizer import decode_increment, find_stop, stop_prefix_holdback


class OutputProcessor:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def on_token(self, req: Req, token_id: int) -> None:
        """Record a sampled token (already appended to req.output_ids); set finished_reason if done."""
        params = req.sampling_params
        if req.first_token_at is None:
            req.first_token_at = time.monotonic()
        before = len(req.decoded_text)
        if params.stop:
            self._decode(req)
        if req.grammar is not None:
            req.grammar.accept_token(token_id)
        if len(req.output_ids) > params.min_new_tokens:  # the sampler masks EOS/stop ids before
            if token_id in req.eos_token_ids and not params.ignore_eos:
                req.finished_reason = FinishReason("stop", matched=token_id)
                return
            if token_id in params.stop_token_ids:
                req.finished_reason = FinishReason("stop", matched=token_id)
                return
            if req.grammar is not None and req.grammar.is_terminated():
                req.finished_reason = FinishReason("stop", matched=None)
                return
            if params.stop:
                hit = find_stop(req.decoded_text, params.stop, before)
                if hit is not None:
                    idx, stop = hit
                    keep = idx + len(stop) if params.no_stop_trim else idx
                    req.decoded_text = req.decoded_text[:keep]
                    req.finished_reason = FinishReason("stop", matched=stop)
                    return
        if len(req.output_ids) >= params.max_new_tokens:
            req.finished_reason = FinishReason("length", length=params.max_new_tokens)

    def restart_decoding(self, req: Req, keep: int) -> None:
        """Output ids from `keep` on were rewritten (jump-forward): decode again from there. The
        text does not change (the new ids spell the old text plus forced text), so what was already
        sent stays valid."""
        req.decoded_text = self.tokenizer.decode(
            req.output_ids[:keep], skip_special_tokens=req.sampling_params.skip_special_tokens
        )
        req.detok_prefix_offset = req.detok_read_offset = keep
        req.sent_ids_len = min(req.sent_ids_len, keep)
        if req.sampling_params.stop:
            self._decode(req)

    def finish_after_jump(self, req: Req) -> Optional[FinishReason]:
        params = req.sampling_params
        if len(req.output_ids) >= params.max_new_tokens:
            del req.output_ids[params.max_new_tokens :]
            return FinishReason("length", length=params.max_new_tokens)
        if req.grammar.is_terminated():
            return FinishReason("stop", matched=None)
        return None

    def _decode(self, req: Req) -> None:
        delta, req.detok_prefix_offset, req.detok_read_offset = decode_increment(
            self.tokenizer,
            req.output_ids,
            req.detok_prefix_offset,
            req.detok_read_offset,
            req.sampling_params.skip_special_tokens,
        )
        req.decoded_text += delta

    def emit(self, req: Req, stream: bool) -> None:
        """Send what is new to the request's owner: every step when streaming, else once at the end."""
        if not stream and not req.finished:
            return
        if req.finished:
            text = self._final_text(req)
        else:
            stops = req.sampling_params.stop
            if not stops:
                self._decode(req)  # with stop strings, on_token already decoded
            text = req.decoded_text
            if stops:
                text = text[: len(text) - stop_prefix_holdback(text, stops)]
        end = len(text)
        new_text = text[req.sent_text_len : end]
        new_ids = req.output_ids[req.sent_ids_len :]
        req.sent_text_len = max(end, req.sent_text_len)
        req.sent_ids_len = len(req.output_ids)
        event = {
            "rid": req.rid,
            "text": new_text,
            "output_ids": new_ids,
            "finished": req.finished,
            "meta_info": self.meta_info(req),
        }
        req.emit(event)

    def _final_text(self, req: Req) -> str:
        if req.sampling_params.stop and req.finished_reason.type == "stop" and isinstance(
            req.finished_reason.matched, str
        ):
            return req.decoded_text  # already trimmed at the stop string
        return self.tokenizer.decode(req.output_ids, skip_special_tokens=req.sampling_params.skip_special_tokens)

    def meta_info(self, req: Req) -> dict:
        now = time.monotonic()
        info = {
            "id": req.rid,
            "prompt_tokens": len(req.origin_input_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": req.cached_tokens,
            "finish_reason": req.finished_reason.to_dict() if req.finished_reason else None,
            "e2e_latency": now - req.created_at,
            "jump_forward_tokens": req.jump_forward_tokens,
            "num_retractions": req.num_retractions,
        }
        if req.first_token_at is not None:
            info["ttft"] = req.first_token_at - req.created_at
        if req.return_logprob:
            # NOTE: copies: the scheduler keeps appending to these lists after the event is sent
            info["input_token_logprobs"] = list(req.input_token_logprobs)
            info["output_token_logprobs"] = list(req.output_token_logprobs)
            if req.top_logprobs_num > 0:
                info["input_top_logprobs"] = list(req.input_top_logprobs)
                info["output_top_logprobs"] = list(req.output_top_logprobs)
        return info


def abort_reason(message: str) -> FinishReason:
    return FinishReason("abort", message=message)
