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
from runtime.forward_batch import ForwardBatch, ForwardMode
from runtime.output_processor import OutputProcessor, abort_reason
from runtime.request import FinishReason, Req
from runtime.schedule_policy import Admission, PrefillAdder, order_waiting
from runtime.scheduler_stats import SchedulerStats
from runtime.step_sampler import StepSampler

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: EngineConfig, runner, tokenizer):
        self.config = config
        self.runner = runner
        self.req_pool = runner.req_to_token_pool
        self.allocator = runner.allocator
        self.cache = create_prefix_cache(self.allocator, config.disable_radix_cache)
        self.output = OutputProcessor(tokenizer)
        self.sampler = StepSampler(runner, tokenizer, config)
        # jump-forward re-runs forced tokens as an extend and relies on the radix cache to keep the rest
        self.jump_forward_enabled = not (config.disable_jump_forward or config.disable_radix_cache)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.chunked: Optional[Req] = None
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
                self.step()
        self._abort_everything("engine shut down")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked)

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
        admissions = self._schedule_extend()
        batch_reqs = [a.req for a in admissions] if admissions else list(self.running)
        try:
            if admissions:
                self._run_extend(admissions)
            elif self.running:
                self._run_decode()
        except Exception as exc:  # a failed step must not take the server down or leak its slots
            logger.error("step failed: %s", traceback.format_exc())
            message = f"internal error: {type(exc).__name__}: {exc}"
            for req in batch_reqs:
                if not req.finished:
                    self._remove_everywhere(req)  # NOTE: admitted requests are in no queue yet
                    self._finish(req, abort_reason(message))

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

    def _run_extend(self, admissions: list[Admission]) -> None:
        input_ids, positions, out_locs, rows, prefix_lens, extend_lens = [], [], [], [], [], []
        for a in admissions:
            req = a.req
            if req.req_pool_idx is None:
                self._place(req, a.prefix_slots)
            slots = self._allocate_slots(a.extend_len)
            self.req_pool.write(req.req_pool_idx, req.kv_len, slots)
            input_ids.extend(req.fill_ids[req.kv_len : req.kv_len + a.extend_len])
            positions.extend(range(req.kv_len, req.kv_len + a.extend_len))
            out_locs.append(slots)
            rows.append(req.req_pool_idx)
            prefix_lens.append(req.kv_len)
            extend_lens.append(a.extend_len)
            req.kv_len += a.extend_len
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        fb = self._forward_batch(
            ForwardMode.EXTEND, input_ids, positions, torch.cat(out_locs), rows, seq_lens, prefix_lens, extend_lens
        )
        hidden = self.runner.forward(fb)
        finishing = self.sampler.extend_logits(admissions, hidden, prefix_lens, extend_lens)
        self.chunked = next((a.req for a in admissions if not a.is_last_chunk), None)
        if not self.config.disable_radix_cache:
            for a in admissions:
                self._cache_prefill(a.req)
        if finishing:
            reqs, logits = finishing
            keep = [i for i, r in enumerate(reqs) if r.sampling_params.max_new_tokens > 0]
            for req in reqs:
                if req.sampling_params.max_new_tokens == 0:  # prompt scoring only (select, logprobs)
                    self._finish(req, FinishReason("length", length=0))
            if keep:
                reqs = [reqs[i] for i in keep]
                logits = logits[torch.tensor(keep, dtype=torch.int64, device=logits.device)]
                self._append_tokens(reqs, self.sampler.sample(reqs, logits), logits, joining=True)

    def _cache_prefill(self, req: Req) -> None:
        """Hand the KV just computed to the prefix cache at once (not only when the request ends),
        so requests admitted after it, and its own later chunks, reuse it. The request keeps it
        locked; where another request cached the same positions first, ours are duplicates."""
        row, kv_len = req.req_pool_idx, req.kv_len
        slots = self.req_pool.read(row, kv_len)
        inserted = self.cache.insert(req.fill_ids[:kv_len], slots)
        if inserted.num_cached > req.cached_len:
            self.allocator.free(slots[req.cached_len : inserted.num_cached])
            match = self.cache.match_prefix(req.fill_ids[: inserted.num_cached])
            self.req_pool.write(row, 0, match.kv_indices)  # point at the cached copies instead
        self.cache.lock(inserted.handle)
        self.cache.unlock(req.cache_handle)
        req.cache_handle, req.cached_len = inserted.handle, kv_len

    def _place(self, req: Req, prefix_slots: torch.Tensor) -> None:
        req.req_pool_idx = self.req_pool.allocate()
        self.req_pool.write(req.req_pool_idx, 0, prefix_slots)
        req.cached_len = req.kv_len = len(prefix_slots)
        if not req.admitted_before:  # report the hit of the first admission, not of re-admissions
            req.admitted_before = True
            req.cached_tokens = req.cached_len
            self.stats.on_prefix_hit(req)

    # ------------------------------------------------------------------ decode
    def _run_decode(self) -> None:
        self._make_room_for_decode()
        reqs = list(self.running)
        slots = self._allocate_slots(len(reqs))
        input_ids = [r.output_ids[-1] if r.output_ids else r.origin_input_ids[-1] for r in reqs]
        positions = [r.kv_len for r in reqs]
        rows = [r.req_pool_idx for r in reqs]
        for req in reqs:
            req.kv_len += 1
        fb = self._forward_batch(ForwardMode.DECODE, input_ids, positions, slots, rows, [r.kv_len for r in reqs])
        # one scatter for the whole batch: each request's new slot at its position
        self.req_pool.req_to_token[fb.req_pool_indices, fb.positions] = slots.to(torch.int32)
        logits = self.runner.decode(fb)
        self._append_tokens(reqs, self.sampler.sample(reqs, logits), logits, joining=False)

    def _make_room_for_decode(self) -> None:
        """Evict cached prefixes, then retract requests, until every running request has a slot."""
        while not self._ensure_free(len(self.running)):
            if self.chunked is not None:
                # a half-prefilled prompt yields first: it has produced nothing yet
                req, self.chunked = self.chunked, None
                self._release(req)
                req.input_token_logprobs.clear()  # its prompt logprobs are recomputed from the start
                req.input_top_logprobs.clear()
                req.num_retractions += 1
                self.stats.num_retractions += 1
                self.waiting.insert(0, req)
            elif len(self.running) > 1:
                # retract the request that loses least: fewest output tokens, newest first on ties
                self._retract(min(reversed(self.running), key=lambda r: r.num_output))
            else:
                return

    def _ensure_free(self, n: int) -> bool:
        if self.allocator.num_free < n:
            self.cache.evict(n - self.allocator.num_free)
        return self.allocator.num_free >= n

    def _retract(self, req: Req) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_retractions += 1
        self.stats.num_retractions += 1
        self.waiting.insert(0, req)

    # ------------------------------------------------------------------ results
    def _append_tokens(self, reqs: list[Req], next_ids: torch.Tensor, logits: torch.Tensor, joining: bool) -> None:
        self.sampler.record_output_logprobs(reqs, logits, next_ids)
        for req, token_id in zip(reqs, next_ids.tolist()):
            if req.finished:  # aborted while its batch ran
                continue
            req.output_ids.append(token_id)
            self.output.on_token(req, token_id)
            self.stats.on_token(req)
            if req.finished:
                if not joining:
                    self.running.remove(req)
                self._finish(req, req.finished_reason)
                continue
            if req.grammar is not None and self.jump_forward_enabled and self._jump_forward(req, joining):
                continue
            if joining:
                self.running.append(req)
            self.output.emit(req, req.stream)

    def _jump_forward(self, req: Req, joining: bool) -> bool:
        """Append the text the grammar forces next as natural tokens, then send the request back
        through one extend step (k forced tokens cost one step instead of k). True if it jumped."""
        from runtime.constrained.jump_forward import jump_forward

        jump = jump_forward(self.output.tokenizer, req.grammar, req.output_ids)
        if jump is None:
            return False
        keep = len(req.output_ids) - jump.num_rollback
        req.output_ids[keep:] = jump.new_token_ids
        req.jump_forward_tokens += len(jump.new_token_ids)
        if req.return_logprob:  # forced tokens were not sampled: they have no logprob
            del req.output_token_logprobs[keep:]
            req.output_token_logprobs.extend((None, t, None) for t in jump.new_token_ids)
            if req.top_logprobs_num:
                del req.output_top_logprobs[keep:]
                req.output_top_logprobs.extend(None for _ in jump.new_token_ids)
        self.output.restart_decoding(req, keep)
        if not joining:
            self.running.remove(req)
        # KV of rewritten positions is stale: drop it (own slots only; cached ones stay with the cache)
        valid = min(req.kv_len, len(req.origin_input_ids) + keep)
        own_start = max(valid, req.cached_len)
        if req.kv_len > own_start:
            self.allocator.free(self.req_pool.read(req.req_pool_idx, req.kv_len, start=own_start))
        req.kv_len = valid
        reason = self.output.finish_after_jump(req)
        if reason is not None:
            self._finish(req, reason)
            return True
        self._release(req)
        self.waiting.insert(0, req)
        self.output.emit(req, req.stream)
        return True

    def _finish(self, req: Req, reason: FinishReason) -> None:
        req.finished_reason = reason
        self._release(req)
        self.stats.on_finish(req)
        self.output.emit(req, req.stream)

    def _release(self, req: Req) -> None:
        """Give a request's KV to the prefix cache (what it computed) and its row back."""
        if req.req_pool_idx is None:
            return
        slots = self.req_pool.read(req.req_pool_idx, req.kv_len)
        inserted = self.cache.insert(req.fill_ids[: req.kv_len], slots)
        if inserted.num_cached > req.cached_len:
            # positions another request cached meanwhile: our copies are duplicates
            self.allocator.free(slots[req.cached_len : inserted.num_cached])
        self.cache.unlock(req.cache_handle)
        self.req_pool.free(req.req_pool_idx)
        req.req_pool_idx, req.cache_handle = None, None
        req.cached_len = req.kv_len = 0

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

    # ------------------------------------------------------------------ helpers
    def _allocate_slots(self, n: int) -> torch.Tensor:
        self._ensure_free(n)
        return self.allocator.allocate(n)

    def _forward_batch(
        self, mode, input_ids, positions, out_loc, rows, seq_lens, prefix_lens=None, extend_lens=None
    ) -> ForwardBatch:
        device = self.runner.device
        bsz = len(rows)
        # one host tensor and one host→device copy for all per-request integers (each copy is a sync)
        per_req = [rows, seq_lens] + ([prefix_lens, extend_lens] if mode is ForwardMode.EXTEND else [])
        host = torch.tensor(input_ids + positions + [v for column in per_req for v in column], dtype=torch.int64)
        dev = host.to(device, non_blocking=True)
        num_tokens = len(input_ids)
        per_req_dev = dev[2 * num_tokens :].view(len(per_req), bsz)
        per_req_cpu = host[2 * num_tokens :].view(len(per_req), bsz)
        fb = ForwardBatch(
            mode=mode,
            batch_size=bsz,
            input_ids=dev[:num_tokens],
            positions=dev[num_tokens : 2 * num_tokens],
            req_pool_indices=per_req_dev[0],
            seq_lens=per_req_dev[1].to(torch.int32),
            out_cache_loc=out_loc.to(device),
            req_to_token=self.req_pool.req_to_token,
            kv_pool=self.runner.kv_pool,
            seq_lens_cpu=per_req_cpu[1],
        )
        if mode is ForwardMode.EXTEND:
            fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu = per_req_cpu[2], per_req_cpu[3]
            fb.extend_prefix_lens = per_req_dev[2].to(torch.int32)
            fb.extend_seq_lens = per_req_dev[3].to(torch.int32)
        return fb

    def _idle_check(self) -> None:
        """Idle: the pool must be whole. A failure is logged loudly but must not stop serving."""
        try:
            self.check_integrity()
        except AssertionError:
            logger.error("KV memory integrity check failed while idle: %s", traceback.format_exc())

    def check_integrity(self) -> None:
        """When idle: every KV slot is free or cached, nothing is locked, every row is free."""
        self.cache.check_integrity()
        self.allocator.check_integrity()
        self.req_pool.check_integrity()
        if not self.has_work():
            assert self.cache.protected_size == 0, f"{self.cache.protected_size} cached tokens still locked"
            total = self.allocator.num_free + self.cache.total_size
            assert total == self.allocator.size, f"KV pool leak: free {self.allocator.num_free} + cached {self.cache.total_size} != {self.allocator.size}"
            assert self.req_pool.num_free + self.req_pool.num_reserved == self.req_pool.size, "a request row leaked"
