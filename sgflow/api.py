"""The language's public functions: they build IR nodes, checking arguments at once."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional, Sequence

from sgflow import ir
from sgflow.choices import get_choices_method, token_length_normalized
from sgflow.errors import ProgramMisuseError
from sgflow.function import Function
from sgflow.global_config import global_config, resolve_backend
from sgflow.resolve import normalize_dtype


def function(func: Optional[Callable] = None, *, num_api_spec_tokens: Optional[int] = None, **default_params: Any):
    """Decorator: `@function` or `@function(temperature=0, max_tokens=64)` (program defaults)."""
    defaults = ir.GenParams.from_kwargs(**default_params)

    def wrap(f: Callable) -> Function:
        return Function(f, num_api_spec_tokens=num_api_spec_tokens, defaults=defaults)

    return wrap(func) if func is not None else wrap


def gen(name: Optional[str] = None, max_tokens: Optional[int] = None, *, dtype: Any = None, choices: Optional[Sequence[str]] = None, choices_method: Any = None, **params: Any) -> ir.Node:
    """Generate into variable `name`. Keywords: every `SamplingParams` field (max_tokens /
    min_tokens are SGLang's names for max_new_tokens / min_new_tokens), return_logprob,
    logprob_start_len, top_logprobs_num, regex, json_schema (JSON string, dict or pydantic model
    class), dtype (int, float, bool, str). With `choices`, this is `select`."""
    _check_name(name)
    if choices is not None:
        taken = [k for k in ("regex", "json_schema") if params.get(k) is not None] + (["dtype"] if dtype else [])
        if taken:
            raise ProgramMisuseError(
                f"gen({name!r}) got choices together with {', '.join(taken)}: use either "
                f"select(name, choices=[...]) or a regex / json_schema / dtype, not both"
            )
        temperature = params.pop("temperature", None)
        if params or max_tokens is not None:
            raise ProgramMisuseError(f"gen(choices=...) is select(); it takes no {sorted(params) or ['max_tokens']}")
        return select(name, choices, temperature or 0.0, choices_method or token_length_normalized)
    if choices_method is not None:
        raise ProgramMisuseError("choices_method needs choices=[...]")
    dtype_name = normalize_dtype(dtype)
    if dtype_name is not None and params.get("regex") is not None:
        raise ProgramMisuseError(f"gen({name!r}) got both dtype and regex: a dtype is a regex; give one")
    if params.get("regex") is not None:
        _check_regex(params["regex"])
    if params.get("json_schema") is not None:
        params["json_schema"] = _schema_string(params["json_schema"])
    return ir.Gen(name, ir.GenParams.from_kwargs(max_tokens=max_tokens, **params), dtype_name)


def gen_int(name: Optional[str] = None, max_tokens: Optional[int] = None, **params: Any) -> ir.Node:
    return gen(name, max_tokens, dtype=int, **params)


def gen_string(name: Optional[str] = None, max_tokens: Optional[int] = None, **params: Any) -> ir.Node:
    return gen(name, max_tokens, dtype=str, **params)


def select(name: Optional[str] = None, choices: Optional[Sequence[str]] = None, temperature: float = 0.0, choices_method: Any = token_length_normalized) -> ir.Node:
    """Append the choice the model finds most likely; its scores are in get_meta_info(name)."""
    _check_name(name)
    if choices is None or isinstance(choices, str) or len(choices) == 0:
        raise ProgramMisuseError(
            f"select({name!r}) needs choices: select({name!r}, choices=['yes', 'no']); "
            f"to generate free text use gen({name!r})"
        )
    choices = tuple(choices)
    bad = [c for c in choices if not isinstance(c, str) or not c]
    if bad:
        raise ProgramMisuseError(f"select choices must be non-empty strings, got {bad}")
    if len(set(choices)) != len(choices):
        raise ProgramMisuseError(f"select choices must be distinct, got {list(choices)}")
    if temperature not in (0, 0.0):
        raise ProgramMisuseError("select picks the most likely choice; temperature must be 0")
    return ir.Select(name, choices, 0.0, get_choices_method(choices_method))


def _role(role: str, expr: Any = None) -> ir.Seq:
    inner = ir.as_node(expr).leaves() if expr is not None else ()
    return ir.Seq((ir.RoleBegin(role),) + inner + (ir.RoleEnd(role),))


def system(expr: Any = None) -> ir.Seq:
    return _role("system", expr)


def user(expr: Any = None) -> ir.Seq:
    return _role("user", expr)


def assistant(expr: Any = None) -> ir.Seq:
    return _role("assistant", expr)


def system_begin() -> ir.RoleBegin:
    return ir.RoleBegin("system")


def system_end() -> ir.RoleEnd:
    return ir.RoleEnd("system")


def user_begin() -> ir.RoleBegin:
    return ir.RoleBegin("user")


def user_end() -> ir.RoleEnd:
    return ir.RoleEnd("user")


def assistant_begin() -> ir.RoleBegin:
    return ir.RoleBegin("assistant")


def assistant_end() -> ir.RoleEnd:
    return ir.RoleEnd("assistant")


def image(*args: Any, **kwargs: Any) -> ir.Node:
    raise NotImplementedError("sgflow does not support images: the runtime serves text-only models")


def video(*args: Any, **kwargs: Any) -> ir.Node:
    raise NotImplementedError("sgflow does not support video: the runtime serves text-only models")


def set_default_backend(backend: Any) -> None:
    global_config.default_backend = backend


def flush_cache(backend: Any = None) -> bool:
    return resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict:
    return resolve_backend(backend).get_server_info()


def _check_name(name: Any) -> None:
    if name is not None and not isinstance(name, str):
        raise ProgramMisuseError(f"a variable name must be a str, got {name!r}")


def _check_regex(regex: Any) -> None:
    if not isinstance(regex, str):
        raise ProgramMisuseError(f"regex must be a str, got {type(regex).__name__}")
    try:
        re.compile(regex)
    except re.error as exc:
        raise ValueError(f"invalid regex {regex!r}: {exc}") from None


def _schema_string(schema: Any) -> str:
    """JSON string, dict, or pydantic model class -> one JSON Schema string."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return json.dumps(schema.model_json_schema())
    if isinstance(schema, dict):
        return json.dumps(schema)
    if isinstance(schema, str):
        try:
            json.loads(schema)
        except ValueError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
        return schema
    raise ProgramMisuseError(f"json_schema must be a JSON string, a dict or a pydantic model class, got {schema!r}")
