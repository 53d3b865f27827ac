"""`ProgramStateGroup`: the children of `s.fork(n)`. Append to all of them at once, index one,
then `join()` to gather their variables into the parent (or append their text to it)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from sgflow import ir
from sgflow.errors import ProgramMisuseError


class ProgramStateGroup:
    """The children of `s.fork(n)`: index them, append to all at once, then `join()`."""

    def __init__(self, states: list, parent: Any, names_at_fork: set):
        self.states = states
        self.parent = parent
        self.names_at_fork = names_at_fork

    def __getitem__(self, i: int) -> Any:
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        # `forks[i] += x` re-assigns the same state; anything else is a mistake.
        if value is not self.states[i]:
            raise ProgramMisuseError("fork states cannot be replaced; append to them with forks[i] += ...")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> "ProgramStateGroup":
        """Append to every child: a node or str, a list (one per child), or a function of the index."""
        if isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ProgramMisuseError(f"got {len(other)} items for {len(self.states)} forks")
            items: Callable[[int], Any] = lambda i: other[i]
        elif callable(other) and not isinstance(other, ir.Node):
            items = other
        else:
            items = lambda i: other
        for i, state in enumerate(self.states):
            state += items(i)
        return self

    def join(self, mode: str = "gather_variable") -> None:
        """gather_variable: each new variable of the children becomes a list in the parent.
        concate_and_append: the children's new text is appended to the parent, in order."""
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
        self.parent._join(self, mode)
