"""From a `gen` node to the request the backend gets: layered params, template stops, dtypes.

dtype=int/float/bool/str becomes a regex when the backend can enforce one. When it cannot, str is
generated between forced quotes, and int/float/bool are generated up to a stop and then checked:
an output that is not of the type raises (a dtype is a constraint; it is never dropped silently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from runtime.sampling_params import SamplingParams

from sgflow.backends.base import BaseBackend, check_constraints
from sgflow.chat_template import ChatTemplate
from sgflow.errors import ProgramMisuseError
from sgflow.ir import Gen


@dataclass(frozen=True)
class DtypeSpec:
    name: str
    regex: str
    fallback_stop: tuple[str, ...] = ()
    quoted: bool = False  # str: the value is a double-quoted string


DTYPES = {
    "int": DtypeSpec("int", r"[-+]?[0-9]+", (" ", "\n")),
    "float": DtypeSpec("float", r"[-+]?[0-9]*\.?[0-9]+", (" ", "\n")),
    "bool": DtypeSpec("bool", r"(True|False)", (" ", "\n")),
    "str": DtypeSpec("str", r'"[\w\d\s]*"', quoted=True),
}
_DTYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", "string": "str"}


def normalize_dtype(dtype: Any) -> Optional[str]:
    if dtype is None:
        return None
    name = _DTYPE_NAMES.get(dtype, dtype)
    if name not in DTYPES:
        raise ProgramMisuseError(f"dtype must be one of int, float, bool, str; got {dtype!r}")
    return name


@dataclass(frozen=True)
class ResolvedGen:
    params: SamplingParams
    options: dict
    check_regex: Optional[str] = None  # validate the output afterwards (dtype, unconstrained backend)
    quote: bool = False  # write '"' before and after the generation (str dtype, unconstrained backend)

    def check(self, name: Optional[str], value: str) -> None:
        if self.check_regex is not None and not re.fullmatch(self.check_regex, value.strip()):
            raise ValueError(
                f"gen({name!r}) asked for a value matching {self.check_regex!r} but the model wrote "
                f"{value!r}; this backend cannot constrain decoding, so the type could not be enforced"
            )


def resolve_gen(node: Gen, defaults: Any, template: ChatTemplate, backend: BaseBackend) -> ResolvedGen:
    """Merge program defaults <- node params, add the template's stop strings, apply the dtype."""
    params = defaults.merged(node.params)
    stop = tuple(params.stop or ()) + tuple(s for s in template.stop_str if s not in (params.stop or ()))
    check, quote = None, False
    if node.dtype is not None:
        spec = DTYPES[node.dtype]
        if "regex" in backend.supported_constraints:
            params = params.replace(regex=spec.regex)
        elif spec.quoted:
            stop, quote = stop + ('"',), True
        else:
            stop, check = stop + spec.fallback_stop, spec.regex
    if stop:
        params = params.replace(stop=stop)
    if params.n not in (None, 1):
        raise ProgramMisuseError("gen(n=...) > 1 is not supported: use forks = s.fork(n) and one gen per fork")
    sampling = params.sampling_params()
    check_constraints(backend, sampling)
    return ResolvedGen(sampling, params.request_options(), check, quote)
