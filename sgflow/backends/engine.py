"""`sgflow.Engine(model_path=..., **engine options)`: programs on the runtime's in-process Engine.

No HTTP: requests go straight to `runtime.Engine.async_generate` on sgflow's loop. Options are
the runtime's (`runtime/config.py` is their one definition); the runtime is imported only here,
when an EngineBackend is built. The wrapped engine is `backend.engine` (offline
`backend.engine.generate(prompt=..., sampling_params=...)` works as with `runtime.Engine`).
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Optional

from sgflow.backends.native import NativeBackend
from sgflow.errors import BackendError
from sgflow.tokens import TokenizerAdapter

_OPTIONAL_KEYS = ("return_logprob", "logprob_start_len", "top_logprobs_num")


class EngineBackend(NativeBackend):
    def __init__(self, model_path: Optional[str] = None, *, chat_template: Optional[str] = None, **engine_options: Any):
        from runtime.engine import Engine

        super().__init__(chat_template)
        self.engine = Engine(model_path=model_path, **engine_options)
        self._owns_engine = True
        self._read_model_info()

    @classmethod
    def from_engine(cls, engine: Any, chat_template: Optional[str] = None) -> "EngineBackend":
        """Wrap an existing `runtime.Engine` (it stays the caller's to shut down)."""
        backend = cls.__new__(cls)
        NativeBackend.__init__(backend, chat_template)
        backend.engine, backend._owns_engine = engine, False
        backend._read_model_info()
        return backend

    def _read_model_info(self) -> None:
        info = self.engine.get_model_info()
        self.model_path = info.get("model_path")
        self.hf_chat_template = info.get("chat_template")
        self._tokenizer = TokenizerAdapter(self.engine.tokenizer)

    @property
    def tokenizer(self) -> TokenizerAdapter:
        return self._tokenizer

    async def _call(self, payload: dict) -> dict:
        try:
            return await self.engine.async_generate(**_engine_kwargs(payload))
        except ValueError as exc:  # the engine's validation: name the problem, keep the cause
            raise BackendError(f"the engine refused the request: {exc}") from exc

    async def _call_stream(self, payload: dict) -> AsyncIterator[dict]:
        try:
            chunks = self.engine.async_generate(**_engine_kwargs(payload), stream=True)
            if inspect.isawaitable(chunks):
                chunks = await chunks
        except ValueError as exc:
            raise BackendError(f"the engine refused the request: {exc}") from exc
        async for chunk in chunks:
            yield chunk

    def flush_cache(self) -> bool:
        return bool(self.engine.flush_cache())

    def get_server_info(self) -> dict:
        return {**self.engine.get_model_info(), **self.engine.get_stats()}

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.shutdown()

    def describe(self) -> str:
        return f"Engine({self.model_path})"


def _engine_kwargs(payload: dict) -> dict:
    kwargs: dict[str, Any] = {"sampling_params": payload.get("sampling_params") or {}}
    if "input_ids" in payload:
        kwargs["input_ids"] = payload["input_ids"]
    else:
        kwargs["prompt"] = payload["text"]
    kwargs.update({k: payload[k] for k in _OPTIONAL_KEYS if payload.get(k) is not None})
    return kwargs
