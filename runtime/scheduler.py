"""The step loop: admit requests, run extend or decode batches, sample, stream results, free memory.

One thread owns every piece of mutable state here (requests, pools, cache); other threads talk to it
only through `inbox` (submit / abort / call). Each step is either an extend batch (new requests and
chunks of long prompts) or a decode batch (one token for every running request).
"""

from __future__ import annotations

import logging
import queue
import traceback
from concurrent.futures import Future
from typing import Callable, Optional

import torch

from runtime.cache.radix import create_prefix_cache
from runtime.config import EngineConfig
from runtime.forward_batch import ForwardMode, build_forward_batch, keep_output_rows
from runtime.launched_batch import LaunchedBatch
from runtime.output_processor import OutputProcessor, abort_reason
from runtime.request import FinishReason, Req
from runtime.request_kv import RequestKV
from runtime.schedule_policy import Admission, PrefillAdder, order_waiting
from runtime.scheduler_stats import SchedulerStats
from runtime.step_sampler import StepSampler, needed_rows
from runtime.transfer import to_device

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: EngineConfig, runner, tokenizer):
        self.config = config
        self.runner = runner
        self.req_pool = runner.req_to_token_pool
        self.allocator = runner.allocator
        self.cache = create_prefix_cache(self.allocator, config.disable_radix_cache)
        self.kv = RequestKV(self.req_pool, self.allocator, self.cache, cache_decoded=not config.deterministic_inference)
        self.output = OutputProcessor(tokenizer)
        self.sampler = StepSampler(runner, tokenizer, config)
        # jump-forward re-runs forced tokens as an extend and relies on the radix cache to keep the rest;
        # deterministic inference keeps decode's one-token path, whatever the batch
        self.jump_forward_enabled = not (config.disable_jump_forward or config.disable_radix_cache or config.deterministic_inference)
        self.jump_forward_max_batch = config.jump_forward_max_batch
        if self.jump_forward_max_batch is None and getattr(runner, "cuda_graph", None) is not None:
            # measured on an H200, 8B model: JSON at batch 64 ran at 0.30 of unconstrained with jumps
            # (each eager extend stalls 63 graph-replayed decodes) and 0.91 without; at batch 1
            # jumps won by 14% (benchmarks/RESULTS.md)
            self.jump_forward_max_batch = 1
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Optional[Req] = None
        # on the CPU every op runs synchronously: there is nothing to overlap, only a step of delay
        device = getattr(runner, "device", None)
        self.overlap = not config.disable_overlap_schedule and getattr(device, "type", None) == "cuda"
        self.inflight: Optional[LaunchedBatch] = None  # sampled on the device, not yet processed
        self._launching: list[Req] = []  # the requests of the phase being run (for failures)
        self.inbox: "queue.SimpleQueue[tuple[str, object]]" = queue.SimpleQueue()
        self.stats = SchedulerStats()
        self._stopped = False

    # ------------------------------------------------------------------ any thread
    def submit(self, req: Req) -> None:
        self.inbox.put(("add", req))

    def abort(self, rid: str) -> None:
        self.inbox.put(("abort", rid))

    def call(self, fn: Callable[["Scheduler"], object]) -> Future:
        """Run fn(scheduler) on the scheduler thread between steps; returns a Future of its result."""
        fut: Future = Future()
        self.inbox.put(("call", (fn, fut)))
        return fut

    def stop(self) -> None:
        self.inbox.put(("stop", None))

    # ------------------------------------------------------------------ scheduler thread
    def run_forever(self) -> None:
        while not self._stopped:
            self._drain_inbox(block=not self.has_work())
            if self._stopped:
                break
            if self.has_work():
                try:
                    self.step()
                except Exception as exc:  # a bug outside a guarded phase: fail the requests, keep serving
                    logger.error("scheduler step crashed: %s", traceback.format_exc())
                    self._abort_everything(f"internal error: {type(exc).__name__}: {exc}")
        self._abort_everything("engine shut down")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked or self.inflight)

    def _drain_inbox(self, block: bool) -> None:
        while True:
            try:
                kind, payload = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                if block and not self.has_work():
                    self._idle_check()
                    continue
                return
            block = False
            if kind == "add":
                self.waiting.append(payload)
                self.stats.on_arrival(payload)
            elif kind == "abort":
                self._abort(payload, "aborted by request")
            elif kind == "call":
                fn, fut = payload
                try:
                    fut.set_result(fn(self))
                except Exception as exc:  # the caller gets the error; the loop goes on
                    fut.set_exception(exc)
            elif kind == "stop":
                self._stopped = True
                return

    def step(self) -> None:
        """Launch the next batch; then, while the device runs it, process the previous batch's
        results; then sample the new batch. Without overlap a batch is processed right after it
        is sampled. See launched_batch.py."""
        launched = self._guard(self._launch)
        if self.inflight is not None:
            previous, self.inflight = self.inflight, None
            self._launching = previous.reqs
            self._guard(self._process, previous)
        if launched is not None:
            self._launching = launched.reqs
            self._guard(self._sample, launched)
            if launched.next_ids is not None:
                if self.overlap:
                    self.inflight = launched
                else:
                    self._guard(self._process, launched)

    def _guard(self, fn, *args):
        """Run one phase of a step. A failure must not take the server down or leak slots: the
        requests of the batch being worked on finish with an abort reason. Returns None then."""
        try:
            return fn(*args)
        except Exception as exc:
            logger.error("step failed: %s", traceback.format_exc())
            message = f"internal error: {type(exc).__name__}: {exc}"
            for req in self._launching:
                if not req.finished:
                    self._remove_everywhere(req)
                    self._finish(req, abort_reason(message))
            return None

    def _launch(self) -> Optional[LaunchedBatch]:
        """Schedule the next batch and queue its forward pass. None if nothing can run now."""
        self._launching = []
        admissions = self._schedule_extend()
        if admissions:
            self._launching = [a.req for a in admissions]
            return self._launch_extend(admissions)
        reqs = self._make_room_for_decode(self._decode_candidates())
        if not reqs:
            return None
        self._launching = reqs
        return self._launch_decode(reqs)

    # ------------------------------------------------------------------ extend
    def _schedule_extend(self) -> list[Admission]:
        if not self.waiting and self.chunked is None:
            return []
        adder = PrefillAdder(self.config, self.cache, self.allocator, self.req_pool, self.running)
        if self.chunked is not None and adder.try_add(self.chunked) is not True:
            return []
        for req in order_waiting(self.waiting, self.config.schedule_policy, self.cache):
            if adder.try_add(req) is False:
                break
        admitted = {id(a.req) for a in adder.admitted}
        self.waiting = [r for r in self.waiting if id(r) not in admitted]
        return adder.admitted

    def _launch_extend(self, admissions: list[Admission]) -> Optional[LaunchedBatch]:
        input_ids, positions, out_locs, rows, prefix_lens, extend_lens = [], [], [], [], [], []
        for a in admissions:
            req = a.req
            if req.req_pool_idx is None:
                self._place(req, a.prefix_slots)
            slots = self.kv.allocate(a.extend_len)
            self.req_pool.write(req.req_pool_idx, req.kv_len, slots)
            input_ids.extend(req.fill_ids[req.kv_len : req.kv_len + a.extend_len])
            positions.extend(range(req.kv_len, req.kv_len + a.extend_len))
            out_locs.append(slots)
            rows.append(req.req_pool_idx)
            prefix_lens.append(req.kv_len)
            extend_lens.append(a.extend_len)
            req.kv_len += a.extend_len
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        self.stats.on_extend_step(sum(extend_lens))
        fb = build_forward_batch(
            ForwardMode.EXTEND, input_ids, positions, torch.cat(out_locs), rows, seq_lens,
            self.req_pool.req_to_token, self.runner.kv_pool, prefix_lens, extend_lens,
        )
        output_lens = extend_lens
        if not self.config.disable_output_rows_only:  # the rows the sampler reads: see needed_rows
            output_lens = [needed_rows(a, n) for a, n in zip(admissions, extend_lens)]
            keep_output_rows(fb, output_lens)
        hidden = self.runner.forward(fb)
        finishing = self.sampler.extend_logits(admissions, hidden, prefix_lens, extend_lens, output_lens)
        self.chunked = next((a.req for a in admissions if not a.is_last_chunk), None)
        if not self.config.disable_radix_cache:
            for a in admissions:
                self.kv.cache_prefill(a.req)
        if not finishing:
            return None
        reqs, logits = finishing
        keep = [i for i, r in enumerate(reqs) if r.sampling_params.max_new_tokens > 0]
        for req in reqs:
            if req.sampling_params.max_new_tokens == 0:  # prompt scoring only (select, logprobs)
                self._finish(req, FinishReason("length", length=0))
        if not keep:
            return None
        if len(keep) < len(reqs):
            reqs = [reqs[i] for i in keep]
            logits = logits[to_device(keep, torch.int64, logits.device)]
        self.running.extend(reqs)  # they decode from the next step on, reading the token on the device
        return LaunchedBatch(reqs, logits)

    def _place(self, req: Req, prefix_slots: torch.Tensor) -> None:
        self.kv.place(req, prefix_slots)
        if not req.admitted_before:  # report the hit of the first admission, not of re-admissions
            req.admitted_before = True
            req.cached_tokens = req.cached_len
            self.stats.on_prefix_hit(req)

    # ------------------------------------------------------------------ decode
    def _decode_candidates(self) -> list[Req]:
        """Running requests that will still want a token after the batch in flight: a request that
        batch brings to max_new_tokens is left out (other finishes are unknown until its results)."""
        inflight = self.inflight
        return [
            r for r in self.running
            if len(r.output_ids) + (inflight is not None and inflight.pending_row(r) is not None)
            < r.sampling_params.max_new_tokens
        ]

    def _launch_decode(self, reqs: list[Req]) -> LaunchedBatch:
        slots = self.kv.allocate(len(reqs))
        self.stats.on_decode_step(len(reqs))
        input_ids = self._decode_input_ids(reqs)
        positions = [r.kv_len for r in reqs]
        rows = [r.req_pool_idx for r in reqs]
        for req in reqs:
            req.kv_len += 1
        fb = build_forward_batch(
            ForwardMode.DECODE, input_ids, positions, slots, rows, [r.kv_len for r in reqs],
            self.req_pool.req_to_token, self.runner.kv_pool,
        )
        try:
            logits = self.runner.decode(fb)  # which also writes the new slots into the slot table
        except Exception:
            # kv_len already counts the new slot: the table must hold it for the abort to free it
            self.runner.write_decode_slots(fb)
            raise
        return LaunchedBatch(reqs, logits)

    def _decode_input_ids(self, reqs: list[Req]) -> "list[int] | torch.Tensor":
        """Each request's newest token; the batch in flight supplies those the host has not seen."""
        host = [r.output_ids[-1] if r.output_ids else r.origin_input_ids[-1] for r in reqs]
        return host if self.inflight is None else self.inflight.next_input_ids(reqs, host, self.runner.device)

    def _make_room_for_decode(self, reqs: list[Req]) -> list[Req]:
        """Evict cached prefixes, then retract requests, until each of `reqs` has a slot; returns
        the requests that stay."""
        reqs = list(reqs)
        while not self.kv.ensure_free(len(reqs)):
            if self.chunked is not None:
                # a half-prefilled prompt yields first: it has produced nothing yet
                req, self.chunked = self.chunked, None
                self.kv.release(req)
                req.input_token_logprobs.clear()  # its prompt logprobs are recomputed from the start
                req.input_top_logprobs.clear()
                req.num_retractions += 1
                self.stats.num_retractions += 1
                self.waiting.insert(0, req)
            elif len(reqs) > 1:
                # retract the request that loses least: fewest output tokens, newest first on ties
                victim = min(reversed(reqs), key=lambda r: r.num_output)
                reqs.remove(victim)
                self._retract(victim)
            else:
                break
        return reqs

    def _retract(self, req: Req) -> None:
        """Back to waiting, KV released. A token it has in flight still arrives and is kept: the
        request re-prefills everything it has when it is admitted again."""
        self.running.remove(req)
        self.kv.release(req)
        req.num_retractions += 1
        self.stats.num_retractions += 1
        self.waiting.insert(0, req)

    # ------------------------------------------------------------------ results
    def _sample(self, batch: LaunchedBatch) -> None:
        live = [batch.is_live(i) for i in range(len(batch.reqs))]
        next_ids = self.sampler.sample(batch.reqs, batch.logits, live)
        rows, logprobs = self.sampler.output_logprobs(batch.reqs, batch.logits, next_ids, live)
        batch.set_sampled(next_ids, rows, logprobs)

    def _process(self, batch: LaunchedBatch) -> None:
        results = batch.wait()
        logprob_index = {row: k for k, row in enumerate(results.logprob_rows)}
        for i, (req, token_id) in enumerate(zip(batch.reqs, results.token_ids)):
            if not batch.is_live(i):  # finished or rewritten while the batch ran
                continue
            if i in logprob_index:
                results.record_logprob(req, logprob_index[i], token_id)
            req.output_ids.append(token_id)
            self.output.on_token(req, token_id)
            self.stats.on_token(req)
            if req.finished:
                self._remove_everywhere(req)
                self._finish(req, req.finished_reason)
                continue
            if req.grammar is not None and self._may_jump() and self._jump_forward(req):
                continue
            self.output.emit(req, req.stream)

    def _may_jump(self) -> bool:
        limit = self.jump_forward_max_batch
        return self.jump_forward_enabled and (limit is None or len(self.running) <= limit)

    def _jump_forward(self, req: Req) -> bool:
        """Append the text the grammar forces next as natural tokens, then send the request back
        through one extend step (k forced tokens cost one step instead of k). True if it jumped."""
        from runtime.constrained.jump_forward import jump_forward

        jump = jump_forward(self.output.tokenizer, req.grammar, req.output_ids)
        if jump is None:
            return False
        keep = len(req.output_ids) - jump.num_rollback
        req.output_ids[keep:] = jump.new_token_ids
        req.output_epoch += 1  # a token sampled for the old ids (a batch in flight) is stale now
        req.jump_forward_tokens += len(jump.new_token_ids)
        if req.return_logprob:  # forced tokens were not sampled: they have no logprob
            del req.output_token_logprobs[keep:]
            req.output_token_logprobs.extend((None, t, None) for t in jump.new_token_ids)
            if req.top_logprobs_num:
                del req.output_top_logprobs[keep:]
                req.output_top_logprobs.extend(None for _ in jump.new_token_ids)
        self.output.restart_decoding(req, keep)
        if req.req_pool_idx is not None:  # KV of rewritten positions is stale
            self.kv.truncate(req, len(req.origin_input_ids) + keep)
        reason = self.output.finish_after_jump(req)
        if reason is not None:
            self._remove_everywhere(req)
            self._finish(req, reason)
            return True
        if req in self.running:
            self.running.remove(req)
            self.kv.release(req)
            self.waiting.insert(0, req)
        self.output.emit(req, req.stream)
        return True

    def _finish(self, req: Req, reason: FinishReason) -> None:
        req.finished_reason = reason
        self.kv.release(req)
        self.stats.on_finish(req)
        self.output.emit(req, req.stream)

    def _abort(self, rid: str, message: str) -> None:
        for req in [*self.waiting, *self.running, *([self.chunked] if self.chunked else [])]:
            if req.rid == rid and not req.finished:
                self._remove_everywhere(req)
                self._finish(req, abort_reason(message))

    def _remove_everywhere(self, req: Req) -> None:
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            self.running.remove(req)
        if req is self.chunked:
            self.chunked = None

    def _abort_everything(self, message: str) -> None:
        for req in [*self.waiting, *self.running, *([self.chunked] if self.chunked else [])]:
            self._abort(req.rid, message)
        self.inflight = None  # its requests are finished; what it still writes lands in freed slots

    # ------------------------------------------------------------------ helpers
    def _idle_check(self) -> None:
        """Idle: the pool must be whole. A failure is logged loudly but must not stop serving."""
        try:
            self.check_integrity()
        except AssertionError:
            logger.error("KV memory integrity check failed while idle: %s", traceback.format_exc())

    def check_integrity(self) -> None:
        """When idle: every KV slot is free or cached, nothing is locked, every row is free."""
        self.kv.check_integrity(idle=not self.has_work())
