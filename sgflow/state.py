"""`ProgramState` (the `s` of a program) and `ProgramStateGroup` (what `s.fork(n)` returns).

Appending checks the program at once, in the body's thread (nested roles, unbalanced scopes,
control nodes), declares the variables it defines, and queues the nodes; reading waits. Every
variable is a future of its latest definition, so `s["x"]` blocks only until that node has run,
and a read of a name never defined raises KeyError listing the names that are.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from contextlib import contextmanager
from typing import Any, AsyncIterator, Iterator, Optional

from sgflow import ir
from sgflow.errors import ProgramMisuseError
from sgflow.interpreter import Executor, JoinPlan, Work
from sgflow.metrics import summarize
from sgflow.state_group import ProgramStateGroup


class ProgramState:
    def __init__(self, executor: Executor, *, declared: Optional[dict] = None, open_role: Optional[str] = None):
        self._executor = executor
        self._declared: dict[str, concurrent.futures.Future] = dict(declared or {})
        self._open_role = open_role
        self._open_scopes: list[str] = []
        self.ret_value: Any = None

    # ------------------------------------------------------------------ appending
    def __iadd__(self, other: Any) -> "ProgramState":
        works = self._plan(ir.as_node(other).leaves())
        for work in works:
            self._executor.submit(work)
        return self

    def _plan(self, leaves: tuple) -> list[Work]:
        """Check every leaf against the roles/scopes open so far, then declare what they define."""
        role, scopes = self._open_role, list(self._open_scopes)
        for node in leaves:
            if isinstance(node, ir.RoleBegin):
                if role is not None:
                    raise ProgramMisuseError(
                        f"role {node.role!r} begun inside role {role!r}: roles do not nest. End {role!r} first, "
                        f"e.g. s += sgflow.{role}(...) then s += sgflow.{node.role}(...), or use separate "
                        f"`with s.{role}():` blocks"
                    )
                role = node.role
            elif isinstance(node, ir.RoleEnd):
                if role != node.role:
                    raise ProgramMisuseError(
                        f"{node.role}_end() without a matching {node.role}_begin() (open role: {role!r})"
                    )
                role = None
            elif isinstance(node, ir.VarScopeBegin):
                scopes.append(node.name)
            elif isinstance(node, ir.VarScopeEnd):
                if not scopes or scopes[-1] != node.name:
                    raise ProgramMisuseError(f"var_scope {node.name!r} ended but the open scopes are {scopes}")
                scopes.pop()
            elif isinstance(node, (ir.Fork, ir.Join)):
                raise ProgramMisuseError("fork/join are not appended: use forks = s.fork(n) and forks.join()")
        self._open_role, self._open_scopes = role, scopes
        return [Work(node, self._declare(_defines(node))) for node in leaves]

    def _declare(self, name: Optional[str]) -> Optional[concurrent.futures.Future]:
        if name is None:
            return None
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._declared[name] = future
        return future

    # ------------------------------------------------------------------ roles and scopes
    def _role(self, role: str, expr: Any) -> Any:
        if expr is not None:
            self += ir.Seq((ir.RoleBegin(role),) + ir.as_node(expr).leaves() + (ir.RoleEnd(role),))
            return None

        @contextmanager
        def scope() -> Iterator[None]:
            self.__iadd__(ir.RoleBegin(role))
            yield
            self.__iadd__(ir.RoleEnd(role))

        return scope()

    def system(self, expr: Any = None) -> Any:
        return self._role("system", expr)

    def user(self, expr: Any = None) -> Any:
        return self._role("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """The text appended inside the block becomes variable `name`."""
        self += ir.VarScopeBegin(name)
        yield
        self += ir.VarScopeEnd(name)

    # ------------------------------------------------------------------ reading
    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def get_var(self, name: str) -> Any:
        """The variable's value, waiting for the node that defines it; raises the program's error."""
        return self._future(name).result()

    def _future(self, name: str) -> concurrent.futures.Future:
        if name not in self._declared:
            raise KeyError(f"no variable {name!r} in this program state; existing: {sorted(self._declared)}")
        return self._declared[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def set_var(self, name: str, value: Any) -> None:
        self._executor.submit(Work(ir.SetVar(name, value), self._declare(name)))

    def __contains__(self, name: str) -> bool:
        return name in self._declared

    def sync(self) -> None:
        """Wait until everything appended so far has run (does not raise; see error())."""
        barrier: concurrent.futures.Future = concurrent.futures.Future()
        self._executor.submit(barrier)
        barrier.result()

    def error(self) -> Optional[BaseException]:
        self.sync()
        return self._executor.error

    def _synced(self) -> Executor:
        self.sync()
        if self._executor.error is not None:
            raise self._executor.error
        return self._executor

    def text(self) -> str:
        return self._synced().transcript.text

    def messages(self) -> list[dict]:
        return [dict(m) for m in self._synced().transcript.messages]

    def token_ids(self) -> list[int]:
        """Exact-token mode: the token ids of the program's text as sent to the model."""
        return list(self._synced().transcript.ids)

    def get_meta_info(self, name: Optional[str] = None) -> Optional[dict]:
        """`name`: the runtime's meta info of that call (+ frontend latency). No name: program
        metrics (calls, prompt/completion/cached tokens, cache hit rate, latency per call), forks'
        calls included (each call names its `branch`)."""
        if name is None:
            return summarize(self._synced().all_calls())
        future = self._future(name)
        concurrent.futures.wait([future])
        return self._executor.meta.get(name)

    # ------------------------------------------------------------------ streaming
    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Yield text as it is generated (stream=True); otherwise yield the final text once."""
        if not self._executor.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        seen = 0
        while True:
            change = self._executor.change
            chunk, done = self._poll(var_name, seen)
            seen += len(chunk)
            if chunk:
                yield chunk
            if done:
                break
            change.result()
        if self._executor.error is not None:
            raise self._executor.error

    async def text_async_iter(self, var_name: Optional[str] = None, return_meta_data: bool = False) -> AsyncIterator[Any]:
        """`async for chunk in state.text_async_iter()`: the async twin of text_iter."""
        if not self._executor.stream:
            await asyncio.wrap_future(self._executor.finished)
            value = self.text() if var_name is None else self.get_var(var_name)
            yield (value, self._executor.meta.get(var_name)) if return_meta_data else value
            return
        seen = 0
        while True:
            change = self._executor.change
            chunk, done = self._poll(var_name, seen)
            seen += len(chunk)
            if chunk:
                yield (chunk, self._executor.meta.get(var_name)) if return_meta_data else chunk
            if done:
                break
            await asyncio.wrap_future(change)
        if self._executor.error is not None:
            raise self._executor.error

    def _poll(self, var_name: Optional[str], seen: int) -> tuple[str, bool]:
        ex = self._executor
        if var_name is None:
            return ex.transcript.text[seen:], ex.finished.done() or ex.error is not None
        if var_name not in self._declared:
            if ex.finished.done():
                raise KeyError(f"no variable {var_name!r} was generated; existing: {sorted(self._declared)}")
            return "", ex.error is not None
        future = self._declared[var_name]
        if future.done() and future.exception() is None:
            return str(future.result())[seen:], True
        return str(ex.variables.get(var_name, ""))[seen:], future.done()

    # ------------------------------------------------------------------ forks
    def fork(self, size: int = 1, position_ids_offset: Any = None) -> "ProgramStateGroup":
        """`size` children that start from this state; they run concurrently."""
        if position_ids_offset is not None:
            raise NotImplementedError("position_ids_offset is not supported by sgflow")
        size = int(size)
        if size < 1:
            raise ProgramMisuseError(f"fork size must be >= 1, got {size}")
        ex = self._executor
        children = [
            Executor(
                ex.backend, ex.defaults, stream=ex.stream, exact_tokens=ex.exact_tokens, inline=ex.inline,
                template=ex.template, start=concurrent.futures.Future(),
            )
            for _ in range(size)
        ]
        for child in children:
            child.trace_log = ex.trace_log
        ex.forks.extend(children)
        names_at_fork = set(self._declared)
        ex.submit(Work(ir.Fork(size), extra=children))
        states = [self._child(child) for child in children]
        return ProgramStateGroup(states, self, names_at_fork)

    def _child(self, executor: Executor) -> "ProgramState":
        child = type(self).__new__(type(self))
        ProgramState.__init__(child, executor, declared=self._declared, open_role=self._open_role)
        child._open_scopes = list(self._open_scopes)
        return child

    @contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator["ProgramState"]:
        group = self.fork(1, position_ids_offset)
        try:
            yield group[0]
        finally:
            group.join()

    def _join(self, group: "ProgramStateGroup", mode: str) -> None:
        children = [s._executor for s in group.states]
        barriers = []
        for child in children:
            barrier: concurrent.futures.Future = concurrent.futures.Future()
            child.submit(barrier)
            barriers.append(barrier)
        gathered = {}
        if mode == "gather_variable":
            names = set().union(*(set(s._declared) for s in group.states)) - group.names_at_fork
            for name in sorted(names):
                child_futures = [s._declared[name] for s in group.states if name in s._declared]
                gathered[name] = (self._declare(name), child_futures)
        self._executor.submit(Work(ir.Join(mode, len(children)), extra=JoinPlan(children, barriers, gathered)))
        for child in children:
            child.end()

    def __repr__(self) -> str:
        self.sync()
        return f"ProgramState({self._executor.transcript.text!r})"


def _defines(node: ir.Node) -> Optional[str]:
    if isinstance(node, (ir.Gen, ir.Select)):
        return node.name
    if isinstance(node, (ir.VarScopeEnd, ir.SetVar)):
        return node.name
    return None
