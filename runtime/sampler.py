"""From logits to next tokens: penalties, grammar mask, temperature / top-k / top-p / min-p, logprobs.

Sampling draws one exponential variate per vocabulary entry and takes argmax(p / noise), which is a
sample from p. Rows of requests with a `seed` draw their noise from their own generator, so a
seeded request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from runtime.request import Req
from runtime.transfer import to_device


@dataclass
class SamplingBatch:
    """Per-row sampling tensors for one step, built once from the batch's requests."""

    temperatures: torch.Tensor  # [B, 1] float32 (greedy rows hold 1.0)
    top_ps: torch.Tensor  # [B]
    top_ks: torch.Tensor  # [B] int64 (vocab size where disabled)
    min_ps: torch.Tensor  # [B]
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    needs_filter: bool
    penalized: list[int]  # rows that need penalties applied
    generators: list[Optional[torch.Generator]]

    @classmethod
    def from_reqs(
        cls, reqs: Sequence[Req], vocab_size: int, device: torch.device, live: Optional[Sequence[bool]] = None
    ) -> "SamplingBatch":
        """`live[i]` False: row i's result will be discarded (its request finished or was rewritten
        while the batch ran); it is sampled greedily and does not consume its request's generator."""
        live = live if live is not None else [True] * len(reqs)
        params = [r.sampling_params for r in reqs]
        greedy = [p.is_greedy or not alive for p, alive in zip(params, live)]
        top_ks = [p.top_k if p.top_k > 0 else vocab_size for p in params]
        floats = to_device(
            [[1.0 if g else p.temperature for p, g in zip(params, greedy)], [p.top_p for p in params],
             [p.min_p for p in params]],
            torch.float32, device,
        )
        return cls(
            temperatures=floats[0].unsqueeze(1),
            top_ps=floats[1],
            top_ks=to_device(top_ks, torch.int64, device),
            min_ps=floats[2],
            greedy=to_device(greedy, torch.bool, device),
            all_greedy=all(greedy),
            needs_filter=any(
                not g and (p.top_p < 1.0 or p.top_k > 0 or p.min_p > 0.0) for p, g in zip(params, greedy)
            ),
            penalized=[i for i, (p, alive) in enumerate(zip(params, live)) if alive and p.needs_penalties],
            generators=[r.generator if alive else None for r, alive in zip(reqs, live)],
        )


def apply_penalties(logits: torch.Tensor, reqs: Sequence[Req], rows: list[int]) -> None:
    """In place. Repetition penalty (HF's rule) over prompt + output; frequency / presence (OpenAI's
    rule) over the output."""
    vocab = logits.shape[-1]
    for i in rows:
        p = reqs[i].sampling_params
        row = logits[i]
        if p.repetition_penalty != 1.0:
            seen = to_device(sorted(set(reqs[i].fill_ids)), torch.int64, logits.device)
            seen = seen[seen < vocab]
            vals = row[seen]
            row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.frequency_penalty != 0.0 or p.presence_penalty != 0.0) and reqs[i].output_ids:
            out = to_device(reqs[i].output_ids, torch.int64, logits.device)
            counts = torch.bincount(out[out < vocab], minlength=vocab).to(row.dtype)
            row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)


# Up to this many rows, argmax on the GPU runs in our chunked kernels (runtime/argmax.py):
# torch reduces each row in one thread block, which leaves a batch-1 step waiting ~29 µs on an H200.
# More rows fill the GPU with torch's blocks anyway.
CHUNKED_ARGMAX_MAX_ROWS = 8


def argmax_rows(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the last dimension of [B, V] scores → [B] int64, ties to the first index."""
    rows = scores.shape[0]
    small = 0 < rows <= CHUNKED_ARGMAX_MAX_ROWS
    if scores.is_cuda and small and scores.dtype == torch.float32 and scores.stride(-1) == 1:
        from runtime.argmax import chunked_argmax  # NOTE: imports triton, which a CPU install may lack

        return chunked_argmax(scores)
    return torch.argmax(scores, dim=-1)


def sample(logits: torch.Tensor, batch: SamplingBatch, default_generator: torch.Generator) -> torch.Tensor:
    """logits: [B, V] float32, already penalised and masked → next token ids [B] int64."""
    greedy_ids = argmax_rows(logits)
    if batch.all_greedy:
        return greedy_ids
    probs = torch.softmax(logits / batch.temperatures, dim=-1)
    if batch.needs_filter:
        probs = _filter(probs, batch)
    noise = torch.empty_like(probs)
    for i, gen in enumerate(batch.generators):
        noise[i].exponential_(generator=gen if gen is not None else default_generator)
    sampled = argmax_rows(probs / noise)
    return torch.where(batch.greedy, greedy_ids, sampled)


def _filter(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    sorted_p, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(probs.shape[-1], device=probs.device).unsqueeze(0)
    drop = ranks >= batch.top_ks.unsqueeze(1)
    # top-p: drop a token once the mass before it already reaches top_p (the first always stays)
    drop |= (sorted_p.cumsum(dim=-1) - sorted_p) >= batch.top_ps.unsqueeze(1)
    drop |= sorted_p < (batch.min_ps * sorted_p[:, 0]).unsqueeze(1)
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def token_logprob_tensors(
    logits: torch.Tensor, token_ids: torch.Tensor, top_n: int, row_invariant: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """On the logits' device, without a sync: the logprob of each chosen token under
    log_softmax(logits) (raw logits: no temperature or mask) [N], and when top_n > 0 the top_n
    alternatives' logprobs and ids [N, top_n]. logits: [N, V], token_ids: [N].
    `row_invariant` (deterministic inference): each row's normaliser from log_normaliser.py, whose
    bits never depend on the other rows."""
    if row_invariant:
        from runtime.log_normaliser import log_normalisers

        logits = logits.float().contiguous()
        row_max, log_sum = log_normalisers(logits)
        shift = lambda x: (x - row_max.unsqueeze(1)) - log_sum.unsqueeze(1)  # noqa: E731 (log_softmax's order)
        chosen = shift(logits.gather(-1, token_ids.view(-1, 1))).view(-1)
        if top_n <= 0:
            return chosen, None, None
        values, indices = logits.topk(min(top_n, logits.shape[-1]), dim=-1)
        return chosen, shift(values), indices
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, token_ids.view(-1, 1)).view(-1)
    if top_n <= 0:
        return chosen, None, None
    values, indices = logprobs.topk(min(top_n, logprobs.shape[-1]), dim=-1)
    return chosen, values, indices


def logprobs_to_lists(
    chosen: torch.Tensor, values: Optional[torch.Tensor], indices: Optional[torch.Tensor]
) -> tuple[list[float], Optional[list[list[tuple[float, int]]]]]:
    """Host lists from token_logprob_tensors' results."""
    if values is None:
        return chosen.tolist(), None
    return chosen.tolist(), [list(zip(v, i)) for v, i in zip(values.tolist(), indices.tolist())]


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, top_n: int, row_invariant: bool = False
) -> tuple[list[float], Optional[list[list[tuple[float, int]]]]]:
    """token_logprob_tensors as host lists (waits for the device)."""
    return logprobs_to_lists(*token_logprob_tensors(logits, token_ids, top_n, row_invariant))
