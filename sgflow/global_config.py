"""Process-wide settings (`sgflow.global_config`, as in SGLang). The default backend lives here;
running without one fails with a message saying how to set it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class GlobalConfig:
    default_backend: Optional[Any] = None
    # run_batch: trace the program and cache its constant prefix before the batch runs.
    enable_precache_with_tracing: bool = True
    min_precache_chars: int = 64  # shorter prefixes are not worth a request of their own
    # Send generated token ids back as-is instead of re-tokenising text (see sgflow.tokens).
    exact_tokens: bool = True


global_config = GlobalConfig()


def resolve_backend(backend: Optional[Any]) -> Any:
    """The backend to run on: the one given, else the default; wraps a raw runtime.Engine."""
    backend = backend if backend is not None else global_config.default_backend
    if backend is None:
        from sgflow.errors import NoBackendError

        raise NoBackendError(
            "no backend to run the program on: pass backend=... to run()/run_batch(), or call "
            "sgflow.set_default_backend(sgflow.RuntimeEndpoint('http://localhost:30000')) "
            "(or sgflow.Engine(model_path=...)) first"
        )
    if type(backend).__module__ == "runtime.engine":
        from sgflow.backends.engine import EngineBackend

        return EngineBackend.from_engine(backend)
    return backend
