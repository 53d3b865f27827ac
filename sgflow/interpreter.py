"""Execution of IR nodes for one program state: one dispatch table, used by running and tracing.

A running state's nodes queue up and execute in order as one coroutine on the shared loop
(`sgflow.loop`), so `s += gen(...)` returns at once and independent states (forks, batch items)
run concurrently. A traced state runs the very same handlers inline against a `TraceBackend`
(`sgflow.tracer`): tracing cannot drift from execution because it *is* execution.

Threads: `submit`/`end` are called from the program body's thread; everything else runs on the
loop thread. The body never touches the transcript; it waits on futures (see `sgflow.state`).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Optional

from sgflow import ir
from sgflow.backends.base import BaseBackend
from sgflow.errors import StopTracing
from sgflow.loop import await_future, drive_inline, get_loop
from sgflow.metrics import CallRecord
from sgflow.resolve import resolve_gen
from sgflow.transcript import Transcript

_END = object()  # queue marker: the program body has returned


@dataclass
class Work:
    """One queued node, with the future that receives the value it defines (if any)."""

    node: ir.Node
    ready: Optional[concurrent.futures.Future] = None
    extra: Any = None  # Fork: the child executors; Join: a JoinPlan


@dataclass
class JoinPlan:
    children: list  # child Executors
    barriers: list  # one future per child, resolved when everything it was given has run
    gathered: dict  # name -> (parent's future, [children's futures]) for gather_variable


class Executor:
    def __init__(
        self,
        backend: BaseBackend,
        defaults: Any,
        *,
        stream: bool = False,
        exact_tokens: bool = True,
        inline: bool = False,
        template: Any = None,
        start: Optional[concurrent.futures.Future] = None,
    ):
        self.backend = backend
        self.defaults = defaults  # GenParams: program defaults <- run() kwargs
        self.template = template or backend.get_chat_template()
        self.stream = stream
        self.exact_tokens = exact_tokens
        self.tokenizer = backend.tokenizer if exact_tokens else None
        self.inline = inline
        self.stop_at_symbolic = False  # prefix-only tracing
        self.transcript = Transcript()
        self.variables: dict[str, Any] = {}  # partial values while streaming
        self.meta: dict[str, dict] = {}
        self.calls: list[CallRecord] = []
        self.forks: list["Executor"] = []  # children of every fork, in order: their calls count too
        self.error: Optional[BaseException] = None
        self.finished: concurrent.futures.Future = concurrent.futures.Future()
        self.fork_point = (0, 0)  # (text length, ids length) of the parent when forked
        self.trace_log: Optional[list] = None
        self._scopes: dict[str, int] = {}
        self._pending: deque = deque()
        self._draining = False
        self._start = start  # a child waits for its parent to reach the fork
        self._started = False
        self.change: concurrent.futures.Future = concurrent.futures.Future()

    # ------------------------------------------------------------------ body-thread side
    def submit(self, item: Any) -> None:
        """Queue a Work, a barrier future, or _END. Inline (tracing): execute now, raise now."""
        if self.inline:
            self._step_inline(item)
        else:
            get_loop().call_soon_threadsafe(self._enqueue, item)

    def end(self) -> None:
        self.submit(_END)

    def fail_from_body(self, exc: BaseException) -> None:
        """The body raised: let readers and stream iterators see it."""
        if not self.inline:
            get_loop().call_soon_threadsafe(self._fail, exc, None)

    # ------------------------------------------------------------------ loop side
    def _enqueue(self, item: Any) -> None:
        self._pending.append(item)
        if not self._draining:
            self._draining = True
            get_loop().create_task(self._drain())

    async def _drain(self) -> None:
        if self._start is not None and not self._started:
            self._started = True
            try:
                await await_future(self._start)
            except BaseException as exc:  # the parent failed before the fork
                self._fail(exc, None)
        while self._pending:
            item = self._pending.popleft()
            await self._step(item)
        self._draining = False

    async def _step(self, item: Any) -> None:
        if item is _END:
            if not self.finished.done():
                self.finished.set_result(None)
        elif isinstance(item, concurrent.futures.Future):
            item.set_result(None)  # a barrier: everything before it has run
        elif self.error is not None:
            self._fail(self.error, item)
        else:
            try:
                value = await self._execute(item)
            except BaseException as exc:
                self._fail(exc, item)
            else:
                if item.ready is not None:
                    item.ready.set_result(value)
        self._notify()

    def _step_inline(self, item: Any) -> None:
        if isinstance(item, Work):
            if self.trace_log is not None:
                self.trace_log.append((id(self), item.node))
            value = drive_inline(self._execute(item))
            if item.ready is not None:
                item.ready.set_result(value)
        else:
            drive_inline(self._step(item))

    def _fail(self, exc: BaseException, work: Optional[Work]) -> None:
        if self.error is None:
            self.error = exc
        futures = []
        if work is not None and work.ready is not None:
            futures.append(work.ready)
        if work is not None and isinstance(work.node, ir.Join):
            futures.extend(parent for parent, _ in work.extra.gathered.values())
        if work is not None and isinstance(work.node, ir.Fork):
            for child in work.extra:  # children must not wait for a fork that never happens
                if child._start is not None and not child._start.done():
                    child._start.set_exception(self.error)
        for future in futures:
            if not future.done():
                future.set_exception(self.error)
        self._notify()

    def _notify(self) -> None:
        # NOTE: swap before waking: a reader that took the old future re-reads after it fires.
        old, self.change = self.change, concurrent.futures.Future()
        old.set_result(None)

    async def _execute(self, work: Work) -> Any:
        handler = _HANDLERS.get(type(work.node))
        if handler is None:
            raise TypeError(f"no handler for IR node {work.node!r}")
        return await handler(self, work)

    # ------------------------------------------------------------------ handlers
    async def _text(self, work: Work) -> None:
        self.transcript.append(work.node.value)

    async def _placeholder(self, work: Work) -> None:
        self.transcript.append("{" + work.node.name + "}", symbolic=True)
        if self.stop_at_symbolic:
            raise StopTracing()

    async def _gen(self, work: Work) -> str:
        node: ir.Gen = work.node
        resolved = resolve_gen(node, self.defaults, self.template, self.backend)
        if resolved.quote:
            self.transcript.append('"')
        prompt = self.transcript.prompt(self.tokenizer)
        start, began = len(self.transcript.text), time.perf_counter()
        if self.stream:
            ids, meta = await self._gen_stream(node.name, prompt, resolved)
        else:
            result = await self.backend.generate(prompt, resolved.params, resolved.options)
            self.transcript.append(result.text, symbolic=result.meta_info.get("symbolic", False))
            ids, meta = result.output_ids, result.meta_info
        self.transcript.commit_output(start, ids, self.tokenizer)
        value = self.transcript.text[start:]
        if resolved.quote:
            self.transcript.append('"')
            value = f'"{value}"'
        resolved.check(node.name, value)
        self._record("gen", node.name, meta, began)
        return value

    async def _gen_stream(self, name: Optional[str], prompt: Any, resolved: Any) -> tuple:
        ids: Optional[list] = []
        meta: dict = {}
        if name is not None:
            self.variables[name] = ""
        async for chunk in self.backend.stream(prompt, resolved.params, resolved.options):
            self.transcript.append(chunk.text)
            if name is not None:
                self.variables[name] += chunk.text
            ids = None if chunk.output_ids is None or ids is None else ids + list(chunk.output_ids)
            meta = chunk.meta_info or meta
            self._notify()
        return ids, meta

    async def _select(self, work: Work) -> str:
        node: ir.Select = work.node
        prompt = self.transcript.prompt(self.tokenizer)
        began = time.perf_counter()
        result = await self.backend.select(prompt, node.choices, node.choices_method)
        start = len(self.transcript.text)
        self.transcript.append(result.decision, symbolic=result.meta_info.get("symbolic", False))
        self.transcript.commit_output(start, result.decision_ids, self.tokenizer)
        self._record("select", node.name, result.meta_info, began)
        return result.decision

    async def _role_begin(self, work: Work) -> None:
        role, t = work.node.role, self.transcript
        default_system = self.template.default_system_prompt
        if not t.messages and role != "system" and default_system:
            await self._role_begin(Work(ir.RoleBegin("system")))
            t.append(default_system)
            await self._role_end(Work(ir.RoleEnd("system")))
        prefix, _ = self.template.get_prefix_and_suffix(role, t.messages)
        t.append(prefix)
        t.role, t.role_begin = role, len(t.text)

    async def _role_end(self, work: Work) -> None:
        role, t = work.node.role, self.transcript
        content = t.text[t.role_begin:].lstrip()
        _, suffix = self.template.get_prefix_and_suffix(role, t.messages)
        t.append(suffix)
        t.messages.append({"role": role, "content": content})
        t.role = None

    async def _scope_begin(self, work: Work) -> None:
        self._scopes[work.node.name] = len(self.transcript.text)

    async def _scope_end(self, work: Work) -> str:
        return self.transcript.text[self._scopes.pop(work.node.name):]

    async def _set_var(self, work: Work) -> Any:
        return work.node.value

    async def _fork(self, work: Work) -> None:
        children: list[Executor] = work.extra
        prompt = self.transcript.prompt(self.tokenizer)  # tokenise once, before the copies
        if work.node.size > 1 and prompt.text:
            began = time.perf_counter()
            meta = await self.backend.cache_prefix(prompt)
            if meta:
                self._record("cache_prefix", None, meta, began)
        for child in children:
            child.transcript = self.transcript.fork()
            child.fork_point = (len(self.transcript.text), len(self.transcript.ids))
            child._start_ready()

    def _start_ready(self) -> None:
        if self._start is not None and not self._start.done():
            self._start.set_result(None)

    async def _join(self, work: Work) -> None:
        plan: JoinPlan = work.extra
        for barrier in plan.barriers:
            await await_future(barrier)
        for child in plan.children:
            if child.error is not None:
                raise child.error
        if work.node.mode == "concate_and_append":
            for child in plan.children:
                self.transcript.append_from(child.transcript, *child.fork_point)
            return
        for parent_future, child_futures in plan.gathered.values():
            parent_future.set_result([await await_future(f) for f in child_futures])

    def all_calls(self, branch: str = "") -> list[CallRecord]:
        """This state's calls, then those of every state forked from it (recursively), each tagged
        with its branch. Calls of forks still running count as far as they have got."""
        calls = [replace(c, branch=branch) for c in list(self.calls)]
        for i, child in enumerate(list(self.forks)):
            calls += child.all_calls(f"{branch}.{i}" if branch else str(i))
        return calls

    # ------------------------------------------------------------------ helpers
    def _record(self, kind: str, name: Optional[str], meta: dict, began: float) -> None:
        latency = time.perf_counter() - began
        if name is not None:
            self.meta[name] = {**meta, "latency": latency}
        self.calls.append(CallRecord.from_meta(kind, name, meta, latency))


_HANDLERS = {
    ir.Text: Executor._text,
    ir.Placeholder: Executor._placeholder,
    ir.Gen: Executor._gen,
    ir.Select: Executor._select,
    ir.RoleBegin: Executor._role_begin,
    ir.RoleEnd: Executor._role_end,
    ir.VarScopeBegin: Executor._scope_begin,
    ir.VarScopeEnd: Executor._scope_end,
    ir.SetVar: Executor._set_var,
    ir.Fork: Executor._fork,
    ir.Join: Executor._join,
}

