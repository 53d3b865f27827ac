"""The sampling side of one scheduler step: which hidden rows need logits, masks, sampling, logprobs.

Kept apart from the scheduler so the step loop reads as policy, and this file as arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch

from runtime.config import EngineConfig
from runtime.request import Req
from runtime.sampler import SamplingBatch, apply_penalties, argmax_rows, sample, token_logprob_tensors, token_logprobs
from runtime.schedule_policy import Admission
from runtime.transfer import to_device


def needed_rows(admission: Admission, extend_len: int) -> int:
    """How many of a request's new tokens in an extend step (its last ones) `extend_logits` reads the
    hidden states of: all for prompt logprobs, the prompt's last token when the prompt ends here,
    none mid-prompt. The model computes its last layer for those rows only."""
    if admission.req.wants_prompt_logprobs:
        return extend_len
    return min(1, extend_len) if admission.is_last_chunk else 0


def _plain_greedy(req: Req) -> bool:
    p = req.sampling_params
    return p.is_greedy and not p.needs_penalties and req.grammar is None and p.min_new_tokens <= len(req.output_ids)


class StepSampler:
    def __init__(self, runner, tokenizer, config: EngineConfig):
        self.runner = runner
        self.tokenizer = tokenizer
        self.generator = torch.Generator(device=runner.device).manual_seed(config.random_seed)
        self.row_invariant = config.deterministic_inference  # logprobs' normalisers too (log_normaliser.py)

    # ------------------------------------------------------------------ extend
    def extend_logits(
        self, admissions: list[Admission], hidden: torch.Tensor, prefix_lens: list[int], extend_lens: list[int],
        output_lens: Optional[list[int]] = None,
    ) -> Optional[tuple[list[Req], torch.Tensor]]:
        """Record prompt logprobs for this chunk; return (requests done with their prompt, their
        next-token logits [n, V]) — or None when every request is mid-chunk. `hidden` holds each
        request's last output_lens[i] tokens (at least `needed_rows`), or all when None."""
        kept_rows = output_lens or extend_lens
        assert hidden.shape[0] == sum(kept_rows), "the model returned other rows than the step asked for"
        last_rows, done = [], []
        offset = 0
        for a, start, n, kept in zip(admissions, prefix_lens, extend_lens, kept_rows):
            if a.req.wants_prompt_logprobs:
                assert kept == n, "prompt logprobs need every row of the chunk"
                self._record_prompt_logprobs(a.req, hidden[offset : offset + n], start)
            if a.is_last_chunk:
                assert kept >= 1, "a prompt that ends in this step keeps its last row"
                last_rows.append(offset + kept - 1)
                done.append(a.req)
            offset += kept
        if not done:
            return None
        rows = to_device(last_rows, torch.int64, hidden.device)
        return done, self.runner.compute_logits(hidden[rows])

    def _record_prompt_logprobs(self, req: Req, hidden: torch.Tensor, start: int) -> None:
        """hidden: [n, H] for positions start..start+n-1 of this request's prompt (this chunk).
        Entry for prompt token i is (logprob of token i given tokens < i, token i, None)."""
        prompt = req.origin_input_ids
        first = max(req.logprob_start_len, 0)
        if first == 0 and start == 0:
            req.input_token_logprobs.append((None, prompt[0], None))
            if req.top_logprobs_num:
                req.input_top_logprobs.append(None)
        # logits at position p score token p + 1
        lo = max(start, first - 1)
        hi = min(start + hidden.shape[0], len(prompt) - 1)
        if hi > lo:
            logits = self.runner.compute_logits(hidden[lo - start : hi - start])
            targets = to_device(prompt[lo + 1 : hi + 1], torch.int64, logits.device)
            chosen, tops = token_logprobs(logits, targets, req.top_logprobs_num, self.row_invariant)
            req.input_token_logprobs.extend((lp, t, None) for lp, t in zip(chosen, prompt[lo + 1 : hi + 1]))
            if tops is not None:
                req.input_top_logprobs.extend([(lp, t, None) for lp, t in row] for row in tops)
        if start + hidden.shape[0] >= len(prompt):
            req.prompt_logprobs_done = True

    # ------------------------------------------------------------------ sampling
    def sample(self, reqs: list[Req], logits: torch.Tensor, live: Optional[list[bool]] = None) -> torch.Tensor:
        """logits: [B, V] float32 raw → next token ids [B], queued on the device (no host sync).
        Raw logits stay untouched (logprobs). Rows with live[i] False are sampled greedily and
        unconstrained: their results are dropped (see launched_batch.py)."""
        live = live if live is not None else [True] * len(reqs)
        if all(_plain_greedy(r) or not alive for r, alive in zip(reqs, live)):
            return argmax_rows(logits)  # the common fast path: no per-row tensors to build
        work = logits
        batch = SamplingBatch.from_reqs(reqs, logits.shape[-1], logits.device, live)
        constrained = [r if alive else None for r, alive in zip(reqs, live)]
        if batch.penalized or any(r and r.sampling_params.min_new_tokens for r in constrained) or any(
            r and r.grammar for r in constrained
        ):
            work = logits.clone()
            apply_penalties(work, reqs, batch.penalized)
            self._mask_early_stops(work, constrained)
            self._apply_grammars(work, constrained)
        return sample(work, batch, self.generator)

    @staticmethod
    def _mask_early_stops(logits: torch.Tensor, reqs: list[Optional[Req]]) -> None:
        """Before min_new_tokens, EOS and stop token ids must not be chosen."""
        rows, cols = [], []
        for i, req in enumerate(reqs):
            if req is None:
                continue
            p = req.sampling_params
            if len(req.output_ids) < p.min_new_tokens:
                banned = set(p.stop_token_ids) | (set() if p.ignore_eos else set(req.eos_token_ids))
                ids = [t for t in banned if t < logits.shape[-1]]
                rows.extend([i] * len(ids))
                cols.extend(ids)
        if rows:
            index = to_device([rows, cols], torch.int64, logits.device)
            logits[index[0], index[1]] = float("-inf")

    def _apply_grammars(self, logits: torch.Tensor, reqs: list[Optional[Req]]) -> None:
        rows = [i for i, r in enumerate(reqs) if r is not None and r.grammar is not None and not r.grammar.is_terminated()]
        if not rows:
            return
        from runtime.constrained.bitmask import allocate_token_bitmask, apply_token_bitmask_

        bitmask = allocate_token_bitmask(len(reqs), logits.shape[-1], device="cpu")
        for i in rows:
            reqs[i].grammar.fill_mask(bitmask, i)
        index = to_device(rows, torch.int64, logits.device)
        apply_token_bitmask_(logits, bitmask.to(logits.device, non_blocking=True), index)

    def output_logprobs(
        self, reqs: list[Req], logits: torch.Tensor, next_ids: torch.Tensor, live: list[bool]
    ) -> tuple[list[int], tuple]:
        """Queue the output logprobs of the rows that asked for them: (rows, device tensors)."""
        rows = [i for i, (r, alive) in enumerate(zip(reqs, live)) if alive and r.return_logprob]
        if not rows:
            return [], (None, None, None)
        index = to_device(rows, torch.int64, logits.device)
        top_n = max(reqs[i].top_logprobs_num for i in rows)
        return rows, token_logprob_tensors(logits[index], next_ids[index], top_n, self.row_invariant)
