"""`@sgflow.function`: a Python function whose first parameter is the program state `s`."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Optional

from sgflow import ir
from sgflow.errors import ProgramMisuseError

_KEYWORDABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Function:
    """A program. `run` / `run_batch` execute it, `trace` shows its structure without a model.

    Sampling defaults layer as: `@function(**params)` <- `run(**params)` <- `gen(**params)`.
    """

    def __init__(self, func: Callable, num_api_spec_tokens: Optional[int] = None, bind_arguments: Optional[dict] = None, defaults: Any = None):
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, *_KEYWORDABLE):
            raise ProgramMisuseError(
                f"@sgflow.function {func.__name__} must take the program state first: def {func.__name__}(s, ...)"
            )
        if num_api_spec_tokens is not None:
            warnings.warn("num_api_spec_tokens (API speculative execution) is not supported; ignoring it", stacklevel=3)
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens
        self.arg_names = [p.name for p in params[1:] if p.kind in _KEYWORDABLE]
        self.accepts_var_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
        self.bind_arguments = dict(bind_arguments or {})
        self.defaults = defaults if defaults is not None else ir.GenParams()
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs: Any) -> "Function":
        unknown = sorted(k for k in kwargs if k not in self.arg_names)
        if unknown and not self.accepts_var_kwargs:
            raise TypeError(f"{self.__name__} has no argument(s) {unknown}; arguments: {self.arg_names}")
        return Function(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs}, self.defaults)

    def run(self, *args: Any, stream: bool = False, backend: Any = None, exact_tokens: Optional[bool] = None, **kwargs: Any):
        """Run once. kwargs are program arguments or sampling defaults (max_new_tokens, temperature, ...)."""
        from sgflow.runner import run_program

        program_kwargs, params = self._split(kwargs)
        defaults = self.defaults.merged(params)
        return run_program(self, backend, args, program_kwargs, defaults, stream=stream, exact_tokens=exact_tokens)

    def run_batch(self, batch_kwargs: list, *, backend: Any = None, num_threads: Any = "auto", progress_bar: bool = False, exact_tokens: Optional[bool] = None, **params: Any):
        """Run once per item (a dict of arguments, or a list of positional arguments)."""
        from sgflow.runner import run_batch

        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError(f"run_batch takes a list of argument dicts, got {type(batch_kwargs).__name__}")
        items = [self._as_kwargs(item) for item in batch_kwargs]
        _, sampling = self._split(params, sampling_only=True)
        return run_batch(
            self, backend, items, self.defaults.merged(sampling),
            num_threads=num_threads, progress_bar=progress_bar, exact_tokens=exact_tokens,
        )

    def trace(self, *, backend: Any = None, **kwargs: Any):
        """Run the body without a model; unknown arguments become placeholders."""
        from sgflow.tracer import trace_program

        return trace_program(self, kwargs, backend)

    def cache(self, backend: Any = None) -> dict:
        """Cache the program's constant prefix in the runtime now."""
        from sgflow.global_config import resolve_backend
        from sgflow.runner import precache

        return precache(self, resolve_backend(backend))

    def __call__(self, *args: Any, **kwargs: Any):
        """Called with a state first: run the body on that state (sub-programs). Else: run()."""
        from sgflow.state import ProgramState

        if args and isinstance(args[0], ProgramState):
            return self.func(*args, **{**self.bind_arguments, **kwargs})
        return self.run(*args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def _split(self, kwargs: dict, sampling_only: bool = False) -> tuple[dict, Any]:
        program, sampling = {}, {}
        for key, value in kwargs.items():
            if key in self.arg_names and not sampling_only:
                program[key] = value
            elif ir.is_param_keyword(key):
                sampling[key] = value
            elif self.accepts_var_kwargs and not sampling_only:
                program[key] = value
            else:
                where = "" if sampling_only else f"not an argument of {self.__name__} ({self.arg_names}) and "
                raise TypeError(f"unexpected keyword {key!r}: {where}not a sampling parameter")
        return program, ir.GenParams.from_kwargs(**sampling)

    def _as_kwargs(self, item: Any) -> dict:
        if isinstance(item, dict):
            return item
        if isinstance(item, (list, tuple)) and len(item) <= len(self.arg_names):
            return dict(zip(self.arg_names, item))
        raise TypeError(f"run_batch item {item!r} does not match the arguments {self.arg_names}")

    def __repr__(self) -> str:
        return f"<sgflow.function {self.__name__}({', '.join(self.arg_names)})>"
