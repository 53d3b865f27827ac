"""The intermediate representation: frozen dataclass nodes that a program appends to its state.

`"Q: " + gen("a") + "\n"` builds a `Seq` of leaves; `s += node` hands the leaves, in order, to the
interpreter. Nodes hold no runtime objects (no futures, no backends) so they print, compare and
trace the same way everywhere.

`GenParams` is the one sampling-parameter list of the language. Its fields are generated from
`runtime.sampling_params.SamplingParams` (so the list is spelled once) plus the request-level
logprob options; `None` means unset. Layers merge with `merged`: program defaults <- run() kwargs
<- gen() kwargs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union

from runtime.sampling_params import SamplingParams

from sgflow.errors import ProgramMisuseError

SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingParams))
# Options of the request rather than of sampling (Engine.generate / POST /generate keywords).
REQUEST_FIELDS: tuple[str, ...] = (
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
)
# SGLang's frontend spellings -> ours.
ALIASES = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}
UNSUPPORTED = {"stop_regex": "use stop=[...] strings; stop_regex is not supported"}


class _GenParamsMethods:
    """Methods of the generated `GenParams` dataclass (fields: SAMPLING_FIELDS + REQUEST_FIELDS)."""

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "GenParams":
        """Validated partial params from user keywords (SGLang aliases accepted, None = unset).

        Raises TypeError naming unknown keywords, ValueError naming a field with a bad value.
        """
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in UNSUPPORTED:
                if value is None:
                    continue
                raise ProgramMisuseError(f"{key}: {UNSUPPORTED[key]}")
            name = ALIASES.get(key, key)
            if name not in PARAM_FIELDS:
                known = sorted(set(PARAM_FIELDS) | set(ALIASES))
                raise TypeError(f"unknown sampling parameter {key!r}; known: {', '.join(known)}")
            if value is not None:
                values[name] = value
        sampling = {k: v for k, v in values.items() if k in SAMPLING_FIELDS}
        if sampling:
            # Validate once, with the runtime's own checks, and keep its normalised values.
            normalised = SamplingParams(**sampling)
            values.update({k: getattr(normalised, k) for k in sampling})
        return cls(**values)

    def set_fields(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def merged(self, over: "GenParams") -> "GenParams":
        """A copy of self where every field set in `over` wins."""
        return dataclasses.replace(self, **over.set_fields())

    def replace(self, **changes: Any) -> "GenParams":
        return dataclasses.replace(self, **changes)

    def sampling_params(self) -> SamplingParams:
        """The runtime's SamplingParams; unset fields take the runtime defaults."""
        return SamplingParams(**{k: v for k, v in self.set_fields().items() if k in SAMPLING_FIELDS})

    def request_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.set_fields().items() if k in REQUEST_FIELDS}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.set_fields().items())
        return f"GenParams({inner})"


PARAM_FIELDS: tuple[str, ...] = SAMPLING_FIELDS + REQUEST_FIELDS

GenParams = dataclasses.make_dataclass(
    "GenParams",
    [(name, Any, dataclasses.field(default=None)) for name in PARAM_FIELDS],
    bases=(_GenParamsMethods,),
    frozen=True,
    repr=False,
)
GenParams.__module__ = __name__


def is_param_keyword(key: str) -> bool:
    return key in PARAM_FIELDS or key in ALIASES or key in UNSUPPORTED


# ---------------------------------------------------------------------------------------- nodes
class Node:
    """Base of IR nodes. `+` with a str or another node builds a flat `Seq`."""

    def __add__(self, other: Any) -> "Seq":
        return Seq(_leaves(self) + _leaves(as_node(other)))

    def __radd__(self, other: Any) -> "Seq":
        return Seq(_leaves(as_node(other)) + _leaves(self))

    def leaves(self) -> tuple["Node", ...]:
        return _leaves(self)


@dataclass(frozen=True, repr=False, eq=True)
class Text(Node):
    value: str

    def __repr__(self) -> str:
        return f"Text({self.value!r})"


@dataclass(frozen=True, repr=False)
class Gen(Node):
    """Generate text into variable `name`. `dtype` ('int', 'float', 'bool', 'str') constrains it."""

    name: Optional[str]
    params: Any  # GenParams
    dtype: Optional[str] = None

    def __repr__(self) -> str:
        extra = f", dtype={self.dtype}" if self.dtype else ""
        params = self.params.set_fields()
        return f"Gen({self.name!r}{extra}{', ' if params else ''}{', '.join(f'{k}={v!r}' for k, v in params.items())})"


@dataclass(frozen=True, repr=False)
class Select(Node):
    """Pick one of `choices` by the model's likelihood; the method is a `choices` strategy object."""

    name: Optional[str]
    choices: tuple[str, ...]
    temperature: float
    choices_method: Any  # choices.ChoicesSamplingMethod

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={list(self.choices)}, method={self.choices_method!r})"


@dataclass(frozen=True)
class RoleBegin(Node):
    role: str


@dataclass(frozen=True)
class RoleEnd(Node):
    role: str


@dataclass(frozen=True)
class VarScopeBegin(Node):
    name: str


@dataclass(frozen=True)
class VarScopeEnd(Node):
    name: str


@dataclass(frozen=True)
class SetVar(Node):
    name: str
    value: Any


@dataclass(frozen=True)
class Placeholder(Node):
    """Trace only: a value unknown before run time (a program argument or a generated variable)."""

    name: str
    kind: str  # "argument" | "variable"


@dataclass(frozen=True)
class Fork(Node):
    """Control: children start from the state at this point; the prefix is cached first if size > 1."""

    size: int


@dataclass(frozen=True)
class Join(Node):
    """Control: wait for the children of a fork; gather their variables or append their text."""

    mode: str  # "gather_variable" | "concate_and_append"
    num_children: int


@dataclass(frozen=True, repr=False)
class Seq(Node):
    items: tuple[Node, ...]

    def __repr__(self) -> str:
        return " + ".join(repr(x) for x in self.items) if self.items else "Seq()"


def as_node(value: Union[str, Node, Any]) -> Node:
    """Turn what a user appends into a node, or fail saying what to write instead."""
    if isinstance(value, Node):
        return value
    if isinstance(value, str):
        return Text(value)
    to_node = getattr(value, "__sgflow_node__", None)  # tracer placeholders
    if to_node is not None:
        return to_node()
    if value is None:
        raise ProgramMisuseError("cannot append None to a program state; append a str or sgflow.gen(...)")
    raise ProgramMisuseError(
        f"cannot append a {type(value).__name__} to a program state; convert it first: s += str(value)"
    )


def _leaves(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Seq):
        return node.items
    return (node,)
