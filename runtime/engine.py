"""The in-process Engine: tokenize, validate, hand requests to the scheduler thread, stream back.

    engine = Engine(model_path="path/to/hf-dir", dtype="float32")
    engine.generate(prompt="Hello", sampling_params={"max_new_tokens": 16, "temperature": 0})

Offline use and the HTTP server drive this same object; only I/O differs.
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
import uuid
from typing import Any, AsyncIterator, Iterator, Union

from runtime.config import EngineConfig
from runtime.engine_inputs import GenerateInput, normalize_inputs
from runtime.request import Req


class Engine:
    def __init__(self, **kwargs: Any):
        from runtime.model.default import default_model_path
        from runtime.model_runner import ModelRunner
        from runtime.scheduler import Scheduler
        from runtime.tokenizer import eos_token_ids, load_tokenizer

        self.config = EngineConfig.from_kwargs(**kwargs)
        if self.config.model_path is None:
            self.config = self.config.replace(model_path=default_model_path())
        self.tokenizer = load_tokenizer(self.config.resolved_tokenizer_path)
        self.runner = ModelRunner(self.config, self.config.model_path)
        self.config = self.config.replace(max_running_requests=self.runner.max_running_requests)  # auto resolved
        self.eos_token_ids = eos_token_ids(self.tokenizer, self.runner.model_config.eos_token_ids)
        self.grammars = self._grammar_compiler()
        self.scheduler = Scheduler(self.config, self.runner, self.tokenizer)
        self._live: set[str] = set()
        self._live_lock = threading.Lock()
        # What start-up built (imports, the model, the tokenizer: ~400k objects on a tiny model) lives as
        # long as the engine. Frozen, the cyclic collector stops walking it: a full collection paused the
        # scheduler 224 ms mid-run on the CPU before (benchmarks/RESULTS.md). shutdown() thaws it.
        gc.collect()
        gc.freeze()
        self._thread = threading.Thread(target=self.scheduler.run_forever, name="sgflow-scheduler", daemon=True)
        self._thread.start()
        self._closed = False

    def _grammar_compiler(self):
        try:
            from runtime.constrained import GrammarCompiler
        except ImportError:
            return None
        return GrammarCompiler(
            self.tokenizer,
            timeout_s=self.config.grammar_compile_timeout,
            whitespace_pattern=self.config.json_whitespace_pattern,
            eos_token_ids=self.eos_token_ids,
        )

    # ------------------------------------------------------------------ info
    @property
    def context_len(self) -> int:
        return self.runner.context_len

    @property
    def max_total_tokens(self) -> int:
        return self.runner.max_total_tokens

    def get_model_info(self) -> dict:
        return {
            "model_path": self.config.model_path,
            "tokenizer_path": self.config.resolved_tokenizer_path,
            "architecture": self.runner.model_config.architecture,
            "context_length": self.context_len,
            "vocab_size": self.runner.vocab_size,
            "max_total_tokens": self.max_total_tokens,
            "chat_template": getattr(self.tokenizer, "chat_template", None),
            "eos_token_ids": sorted(self.eos_token_ids),
            "attention_backend": self.runner.attention_backend_name,
            "device": str(self.runner.device),
        }

    # ------------------------------------------------------------------ requests
    def _make_reqs(self, inputs: list[GenerateInput], emit_for) -> list[Req]:
        reqs = []
        for item in inputs:
            grammar = self._compile_grammar(item) if item.sampling_params.has_constraint else None
            reqs.append(
                Req(
                    rid=item.rid,
                    origin_input_ids=item.input_ids,
                    sampling_params=item.sampling_params,
                    eos_token_ids=self.eos_token_ids,
                    emit=emit_for(item.rid),
                    return_logprob=item.return_logprob,
                    logprob_start_len=item.logprob_start_len,
                    top_logprobs_num=item.top_logprobs_num,
                    grammar=grammar,
                    stream=item.stream,
                    generator=item.make_generator(self.runner.device),
                )
            )
        return reqs

    def _compile_grammar(self, item: GenerateInput):
        params = item.sampling_params
        if self.grammars is None:
            raise ValueError("regex / json_schema / choices are not supported by this runtime build")
        kind, spec = next((k, getattr(params, k)) for k in ("regex", "json_schema", "choices") if getattr(params, k) is not None)
        compiled = self.grammars.get(kind, spec)  # raises ValueError naming the problem
        return compiled.matcher()

    def _prepare(self, stream: bool, **kwargs) -> list[GenerateInput]:
        if self._closed:
            raise RuntimeError("the engine is shut down")
        inputs = normalize_inputs(self, stream=stream, **kwargs)
        if stream and len(inputs) != 1:
            raise ValueError("stream=True takes one prompt (and n == 1)")
        with self._live_lock:
            clash = [i.rid for i in inputs if i.rid in self._live]
            if clash:
                raise ValueError(f"rid {clash[0]!r} is already in use by a running request")
            self._live.update(i.rid for i in inputs)
        return inputs

    def _build_reqs(self, inputs: list[GenerateInput], emit_for) -> list[Req]:
        def releasing(rid: str):
            # the rid is free again once the scheduler finishes the request, whether or not
            # anyone reads the result (a stream that is never iterated must not pin it)
            deliver = emit_for(rid)

            def emit(event: dict) -> None:
                if event["finished"]:
                    self._done(rid)
                deliver(event)

            return emit

        try:
            return self._make_reqs(inputs, releasing)  # may compile grammars: raises on a bad spec
        except BaseException:
            for i in inputs:
                self._done(i.rid)
            raise

    def _submit(self, reqs: list[Req]) -> None:
        for req in reqs:
            self.scheduler.submit(req)

    def _done(self, rid: str) -> None:
        with self._live_lock:
            self._live.discard(rid)

    # ------------------------------------------------------------------ sync API
    def generate(
        self,
        prompt: Union[str, list[str], None] = None,
        sampling_params: Union[dict, list[dict], None] = None,
        input_ids: Union[list[int], list[list[int]], None] = None,
        return_logprob: Union[bool, list[bool]] = False,
        logprob_start_len: Union[int, list[int]] = -1,
        top_logprobs_num: Union[int, list[int]] = 0,
        stream: bool = False,
        rid: Union[str, list[str], None] = None,
    ):
        """Generate for one prompt (→ dict) or a list (→ list of dicts). `stream=True` (single prompt)
        returns an iterator of chunks whose `text` / `output_ids` are the new part only."""
        kwargs = dict(prompt=prompt, sampling_params=sampling_params, input_ids=input_ids,
                      return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                      top_logprobs_num=top_logprobs_num, rid=rid)
        inputs = self._prepare(stream, **kwargs)
        queues = {i.rid: queue.SimpleQueue() for i in inputs}
        self._submit(self._build_reqs(inputs, lambda r: queues[r].put))
        if stream:
            return self._stream_sync(inputs[0].rid, queues[inputs[0].rid])
        results = [self._collect_sync(i.rid, queues[i.rid]) for i in inputs]
        return results if _is_batch(prompt, input_ids) or len(results) > 1 else results[0]

    def _next_event(self, q: "queue.SimpleQueue[dict]") -> dict:
        while True:
            try:
                return q.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive():  # never wait forever on a dead scheduler
                    raise RuntimeError("the engine's scheduler thread has stopped") from None

    def _collect_sync(self, rid: str, q: "queue.SimpleQueue[dict]") -> dict:
        text, ids = [], []
        while True:
            event = self._next_event(q)
            text.append(event["text"])
            ids.extend(event["output_ids"])
            if event["finished"]:
                return {"text": "".join(text), "output_ids": ids, "meta_info": event["meta_info"]}

    def _stream_sync(self, rid: str, q: "queue.SimpleQueue[dict]") -> Iterator[dict]:
        finished = False
        try:
            while not finished:
                event = self._next_event(q)
                finished = event["finished"]
                yield {"text": event["text"], "output_ids": event["output_ids"], "meta_info": event["meta_info"]}
        finally:
            if not finished:
                self.abort(rid)  # the consumer stopped early

    # ------------------------------------------------------------------ async API
    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, return_logprob=False,
                             logprob_start_len=-1, top_logprobs_num=0, stream: bool = False, rid=None):
        """Same arguments as `generate`; `stream=True` returns an async iterator of chunks."""
        kwargs = dict(prompt=prompt, sampling_params=sampling_params, input_ids=input_ids,
                      return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                      top_logprobs_num=top_logprobs_num, rid=rid)
        inputs = self._prepare(stream, **kwargs)
        loop = asyncio.get_running_loop()
        queues = {i.rid: asyncio.Queue() for i in inputs}

        def emit_for(r):
            return lambda event: loop.call_soon_threadsafe(queues[r].put_nowait, event)

        self._submit(await loop.run_in_executor(None, self._build_reqs, inputs, emit_for))
        if stream:
            return self._stream_async(inputs[0].rid, queues[inputs[0].rid])
        results = await asyncio.gather(*(self._collect_async(i.rid, queues[i.rid]) for i in inputs))
        return list(results) if _is_batch(prompt, input_ids) or len(results) > 1 else results[0]

    async def _collect_async(self, rid: str, q: asyncio.Queue) -> dict:
        text, ids = [], []
        try:
            while True:
                event = await q.get()
                text.append(event["text"])
                ids.extend(event["output_ids"])
                if event["finished"]:
                    return {"text": "".join(text), "output_ids": ids, "meta_info": event["meta_info"]}
        except asyncio.CancelledError:
            self.abort(rid)
            raise

    async def _stream_async(self, rid: str, q: asyncio.Queue) -> AsyncIterator[dict]:
        finished = False
        try:
            while not finished:
                event = await q.get()
                finished = event["finished"]
                yield {"text": event["text"], "output_ids": event["output_ids"], "meta_info": event["meta_info"]}
        finally:
            if not finished:
                self.abort(rid)  # the client went away

    # ------------------------------------------------------------------ control
    def abort(self, rid: str) -> None:
        self.scheduler.abort(rid)

    def abort_all(self) -> None:
        """Abort every waiting and running request (their owners get finish_reason abort)."""
        self.scheduler.call(lambda s: s._abort_everything("aborted by abort_all")).result()

    def flush_cache(self) -> bool:
        """Drop the prefix cache. Refused (False) while requests are running or waiting."""
        def flush(s):
            if s.has_work():
                return False
            s.cache.reset()
            return True

        return self.scheduler.call(flush).result()

    def check_integrity(self) -> None:
        """Raise if KV memory is not whole (tests call this when the engine is idle)."""
        self.scheduler.call(lambda s: s.check_integrity()).result()

    def get_stats(self) -> dict:
        def snapshot(s):
            return {
                "num_running": len(s.running) + (1 if s.chunked else 0),
                "num_waiting": len(s.waiting),
                "num_requests": s.stats.num_requests,
                "prompt_tokens": s.stats.prompt_tokens,
                "cached_prompt_tokens": s.stats.cached_prompt_tokens,
                "generation_tokens": s.stats.generation_tokens,
                "cache_hit_rate": s.stats.cache_hit_rate,
                "num_retractions": s.stats.num_retractions,
                "num_finished": s.stats.num_finished,
                "num_aborted": s.stats.num_aborted,
                "num_extend_steps": s.stats.num_extend_steps,
                "extend_tokens": s.stats.extend_tokens,
                "num_decode_steps": s.stats.num_decode_steps,
                "decode_rows": s.stats.decode_rows,
                "kv_free": s.allocator.num_free,
                "kv_cached": s.cache.total_size,
                "kv_total": s.allocator.size,
            }

        return self.scheduler.call(snapshot).result()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.scheduler.stop()
        self._thread.join(timeout=30)
        if self.grammars is not None:
            self.grammars.close()  # its compile workers must not outlive the engine
        gc.unfreeze()  # this engine's objects may be cyclic garbage now: collectable again
        if not self._thread.is_alive():
            # drop every device tensor now (weights, KV pool, graphs), not when the Engine object dies
            self.scheduler = None
            self.runner.release()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _is_batch(prompt, input_ids) -> bool:
    if isinstance(prompt, list):
        return True
    return isinstance(input_ids, list) and bool(input_ids) and isinstance(input_ids[0], list)


def new_rid() -> str:
    return uuid.uuid4().hex
