"""Tracing: run a program's body without a model to see its structure and its constant prefix.

The body runs against the same `Executor` handlers as a real run, inline, with a `TraceBackend`
that returns placeholders instead of calling a model; program arguments are `TracedValue`
placeholders. So the traced text (role prefixes, default system prompt, ...) is exactly what a
real run would send, and the constant prefix of a batch is the text before the first placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Sequence

from sgflow import ir
from sgflow.backends.base import CONSTRAINTS, BaseBackend, GenChunk, GenResult, Prompt, SelectResult
from sgflow.chat_template import ChatTemplate, get_chat_template
from sgflow.errors import ProgramMisuseError, StopTracing
from sgflow.interpreter import Executor
from sgflow.state import ProgramState


class TracedValue:
    """A value unknown while tracing: a program argument or a generated variable.

    It can be appended (`s += "Q: " + question`) but not looked into: formatting, str(), len(),
    truthiness raise at once with what to write instead.
    """

    def __init__(self, name: str, kind: str):
        self._name, self._kind = name, kind

    def __sgflow_node__(self) -> ir.Placeholder:
        return ir.Placeholder(self._name, self._kind)

    def __add__(self, other: Any) -> ir.Seq:
        return self.__sgflow_node__() + other

    def __radd__(self, other: Any) -> ir.Seq:
        return other + self.__sgflow_node__()

    def _refuse(self, what: str) -> ProgramMisuseError:
        return ProgramMisuseError(
            f"{self._kind} {self._name!r} used in {what} while tracing: the tracer cannot see inside it. "
            f"Append it as a piece instead: s += 'text ' + {self._name} + ' more'"
        )

    def __format__(self, spec: str) -> str:
        raise self._refuse("an f-string or format()")

    def __str__(self) -> str:
        raise self._refuse("str()")

    def __len__(self) -> int:
        raise self._refuse("len()")

    def __bool__(self) -> bool:
        raise self._refuse("a condition")

    def __iter__(self):
        raise self._refuse("a loop")

    def __eq__(self, other: Any) -> bool:
        return False  # branches on generated values take their `else` while tracing

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<traced {self._kind} {self._name}>"


class TraceBackend(BaseBackend):
    """Answers every model call with a placeholder; `stop_at_first_call` ends a prefix-only trace."""

    supported_constraints = frozenset(CONSTRAINTS)

    def __init__(self, template: ChatTemplate, stop_at_first_call: bool = False):
        self.template = template
        self.stop_at_first_call = stop_at_first_call

    def get_chat_template(self) -> ChatTemplate:
        return self.template

    async def generate(self, prompt: Prompt, params: Any, options: dict) -> GenResult:
        if self.stop_at_first_call:
            raise StopTracing()
        return GenResult("{gen}", None, {"symbolic": True})

    async def stream(self, prompt: Prompt, params: Any, options: dict) -> AsyncIterator[GenChunk]:
        yield GenChunk((await self.generate(prompt, params, options)).text, None, {"symbolic": True})

    async def select(self, prompt: Prompt, choices: Sequence[str], method: Any) -> SelectResult:
        if self.stop_at_first_call:
            raise StopTracing()
        return SelectResult("{select}", None, {"symbolic": True})


class TracingState(ProgramState):
    """A ProgramState whose variables read as placeholders instead of waiting."""

    def get_var(self, name: str) -> Any:
        self._future(name)  # KeyError with the existing names, as in a real run
        return TracedValue(name, "variable")


@dataclass
class Trace:
    """What `f.trace()` returns: every node each state executed, and the constant prefix."""

    nodes: list  # (state index, node): 0 is the program, forks get the next numbers
    text: str  # the root state's text, placeholders as {name}
    prefix: str  # the text before the first placeholder
    variables: list
    state: Any = None

    def __repr__(self) -> str:
        lines = [f"Trace(prefix={self.prefix!r}, variables={self.variables})"]
        lines += [f"  %{i} {node!r}" for i, node in self.nodes]
        return "\n".join(lines)


def trace_program(program: Any, arguments: dict, backend: Optional[BaseBackend] = None, *, prefix_only: bool = False) -> Trace:
    """Run `program`'s body with placeholder arguments (`arguments` fills some with real values).
    `prefix_only`: stop at the first placeholder and swallow errors from the body."""
    template = backend.get_chat_template() if backend is not None else get_chat_template("default")
    executor = Executor(
        TraceBackend(template, stop_at_first_call=prefix_only),
        ir.GenParams(),
        exact_tokens=False,
        inline=True,
    )
    executor.stop_at_symbolic = prefix_only
    executor.trace_log = []
    state = TracingState(executor)
    args = {name: TracedValue(name, "argument") for name in program.arg_names}
    args.update(program.bind_arguments)
    args.update(arguments)
    try:
        state.ret_value = program.func(state, **args)
    except StopTracing:
        pass
    except Exception:
        if not prefix_only:
            raise
    t = executor.transcript
    prefix = t.text if t.symbolic_from is None else t.text[: t.symbolic_from]
    ids = {}
    nodes = [(ids.setdefault(owner, len(ids)), node) for owner, node in executor.trace_log]
    return Trace(nodes, t.text, prefix, sorted(state._declared), state)


def extract_prefix(program: Any, backend: Optional[BaseBackend] = None) -> str:
    """The constant text every run of `program` starts with, whatever its arguments."""
    return trace_program(program, {}, backend, prefix_only=True).prefix
