"""GrammarCompiler: compiled grammars cached by (kind, spec), compiled off the caller's thread.

    compiler = GrammarCompiler(tokenizer, max_workers=2, timeout_s=10.0)
    future = compiler.submit("json_schema", schema)        # returns at once
    grammar = compiler.get("regex", r"[0-9]+")             # waits; ValueError if the spec is bad

Each of the `max_workers` threads drives its own child process (worker.py), so a runaway compile
is killed at `timeout_s` and cannot wedge the server or the other workers. Results and failures are
both cached (a bad spec sent twice fails fast the second time); the cache keeps the most recently
used `max_cache_entries` specs.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Iterable, Optional

from runtime.constrained.fsm import CompiledGrammar
from runtime.constrained.spec import KINDS
from runtime.constrained.vocabulary import load_tokenizer, token_vocabulary
from runtime.constrained.worker import CompileWorker

DEFAULT_MEMORY_LIMIT = 8 * 2**30


class GrammarCompiler:
    """Compile and cache grammars for one tokenizer; thread-safe."""

    def __init__(
        self,
        tokenizer: Any,
        max_workers: int = 2,
        timeout_s: float = 10.0,
        whitespace_pattern: Optional[str] = None,
        *,
        eos_token_ids: Optional[Iterable[int]] = None,
        memory_limit_bytes: Optional[int] = DEFAULT_MEMORY_LIMIT,
        max_cache_entries: int = 512,
    ) -> None:
        if max_workers < 1 or timeout_s <= 0:
            raise ValueError("max_workers must be >= 1 and timeout_s > 0")
        self.tokenizer = load_tokenizer(tokenizer)
        self.vocab = token_vocabulary(self.tokenizer, eos_token_ids)
        self.timeout_s = timeout_s
        self.whitespace_pattern = whitespace_pattern
        self.max_cache_entries = max_cache_entries
        self._cache: "OrderedDict[tuple, Future]" = OrderedDict()
        self._lock = threading.Lock()
        self._jobs: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._workers = [CompileWorker(self.vocab, memory_limit_bytes) for _ in range(max_workers)]
        self._threads = [
            threading.Thread(target=self._serve, args=(w,), name=f"sgflow-grammar-{i}", daemon=True)
            for i, w in enumerate(self._workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, kind: str, spec: Any) -> "Future[CompiledGrammar]":
        """A future for the compiled grammar; it resolves to ValueError if the spec is bad or slow."""
        try:
            key = cache_key(kind, spec)
        except ValueError as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future
            future = Future()
            self._cache[key] = future
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)
        self._jobs.put((key[0], key[1], future))
        return future

    def get(self, kind: str, spec: Any, timeout: Optional[float] = None) -> CompiledGrammar:
        """Wait for the compiled grammar (ValueError if the spec fails or `timeout` passes first)."""
        try:
            return self.submit(kind, spec).result(timeout)
        except FutureTimeout:
            raise ValueError(f"the {kind} was still compiling after {timeout:g} s") from None

    def close(self) -> None:
        """Stop the worker threads and their child processes."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> "GrammarCompiler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _serve(self, worker: CompileWorker) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, spec, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                index = worker.compile(kind, spec, self.whitespace_pattern, self.timeout_s)
                future.set_result(CompiledGrammar(index, self.vocab))
            except ValueError as exc:
                future.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 - never leave a future unresolved
                future.set_exception(ValueError(f"compiling the {kind} failed: {type(exc).__name__}: {exc}"))


def cache_key(kind: str, spec: Any) -> tuple[str, Any]:
    """(kind, canonical spec): JSON schemas as compact JSON text, choices as a tuple."""
    if kind not in KINDS:
        raise ValueError(f"unknown constraint kind {kind!r}; expected one of {KINDS}")
    if kind == "json_schema":
        from grammars.json_schema import to_schema_string
        from runtime.constrained.schema import checked_schema_dict

        return kind, to_schema_string(checked_schema_dict(spec))
    if kind == "choices":
        if isinstance(spec, str) or not isinstance(spec, (list, tuple)):
            raise ValueError("choices must be a list of strings")
        return kind, tuple(spec)
    if not isinstance(spec, str):
        raise ValueError(f"regex must be a string, got {type(spec).__name__}")
    return kind, spec
