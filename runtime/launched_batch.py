"""A batch whose forward pass is queued on the device, on its way to sampled tokens.

Life of one batch under overlap scheduling (the scheduler keeps at most one in flight):

    launch N+1 ──▶ process N's results ──▶ sample N+1 ──▶ launch N+2 ──▶ process N+1's results ...
    (queue forward)  (host: stops, grammars,   (queue masks and     ↑ the GPU runs forward N+1
                      detokenise, stream)       sampling; copy ids)   while the host processes N

Because step N+1 is launched before N's tokens reach the host, its input ids for requests in N are
read on the device from N's `next_ids`, and it may carry requests that N finishes. Their rows are
*dead*: sampled greedily, their results dropped. A row is also dead when its request's output was
rewritten (jump-forward) after launch, which `output_epoch` detects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from runtime.request import Req
from runtime.sampler import logprobs_to_lists
from runtime.transfer import HostCopy, to_device


@dataclass
class SampledResults:
    token_ids: list[int]
    logprob_rows: list[int]  # rows with output logprobs, in order
    logprobs: list[float]
    top_logprobs: Optional[list[list[tuple[float, int]]]]

    def record_logprob(self, req: Req, k: int, token_id: int) -> None:
        """Append the k-th logprob row (and its top alternatives) to req's output logprobs."""
        req.output_token_logprobs.append((self.logprobs[k], token_id, None))
        if req.top_logprobs_num:
            req.output_top_logprobs.append([(lp, t, None) for lp, t in self.top_logprobs[k][: req.top_logprobs_num]])


@dataclass
class LaunchedBatch:
    reqs: list[Req]  # the rows that sample a token, in row order
    logits: Optional[torch.Tensor]  # [B, V] float32 until sampled (may be a CUDA-graph buffer)
    epochs: list[int] = field(init=False)  # each row's request.output_epoch at launch
    next_ids: Optional[torch.Tensor] = None  # [B] on the device, once sampled
    _logprob_rows: list[int] = field(default_factory=list)
    _copy: Optional[HostCopy] = None

    def __post_init__(self) -> None:
        self.epochs = [r.output_epoch for r in self.reqs]
        self._rows = {id(r): i for i, r in enumerate(self.reqs)}

    def is_live(self, row: int) -> bool:
        req = self.reqs[row]
        return not req.finished and req.output_epoch == self.epochs[row]

    def pending_row(self, req: Req) -> Optional[int]:
        """The row whose sampled token `req` has not seen yet, or None."""
        row = self._rows.get(id(req))
        if row is None or self.next_ids is None or not self.is_live(row):
            return None
        return row

    def next_input_ids(self, reqs: list[Req], host_ids: list[int], device: torch.device) -> "list[int] | torch.Tensor":
        """Input ids of a decode step launched while this batch is in flight: `host_ids[i]`, or,
        where this batch sampled a token reqs[i] has not seen yet, that token read on the device."""
        src = [self.pending_row(r) for r in reqs]
        if all(row is None for row in src):
            return host_ids
        if src == list(range(len(self.reqs))):
            return self.next_ids  # steady state: the same requests in the same order
        # one host→device copy: [row in this batch (0 if none), host id, 1 if the row supplies it]
        table = to_device([[0 if row is None else row for row in src], host_ids, [row is not None for row in src]],
                          torch.int64, device)
        return torch.where(table[2].bool(), self.next_ids[table[0]], table[1])

    def set_sampled(
        self,
        next_ids: torch.Tensor,
        logprob_rows: list[int] = (),
        logprobs: tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None, None),
    ) -> None:
        """Record the queued sampling results and start copying them to the host."""
        self.next_ids = next_ids
        self.logits = None  # the next forward may overwrite a CUDA-graph logits buffer
        self._logprob_rows = list(logprob_rows)
        self._copy = HostCopy([next_ids, *logprobs])

    def wait(self) -> SampledResults:
        """Block until this batch's tokens are on the host (not until later queued work is done)."""
        ids, chosen, top_values, top_ids = self._copy.wait()
        results = SampledResults(ids.tolist(), self._logprob_rows, [], None)
        if chosen is not None:
            results.logprobs, results.top_logprobs = logprobs_to_lists(chosen, top_values, top_ids)
        return results
