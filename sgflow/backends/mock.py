"""`MockBackend`: the native backend over a scripted `MockModel`, for tests.

It runs the very code the Engine and HTTP backends run (`NativeBackend`: request building, select
scoring, prefix caching); only the model is scripted. `calls` records every request in order,
`latency` makes each call take that long (so concurrency is observable), and `max_in_flight`
says how many calls overlapped.

    backend = MockBackend({"capital of France": " Paris"}, choice_logprobs={"yes": [-0.1]})
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

from sgflow.backends.mock_model import MockModel
from sgflow.backends.native import NativeBackend
from sgflow.errors import BackendError


class MockBackend(NativeBackend):
    def __init__(
        self,
        rules: Optional[dict] = None,
        *,
        model: Optional[MockModel] = None,
        latency: float = 0.0,
        chat_template: Optional[str] = None,
        token_ids: bool = True,
        **model_kwargs: Any,
    ):
        super().__init__(chat_template)
        self.model = model or MockModel(rules, **model_kwargs)
        self.model_path = self.model.model_path
        self.hf_chat_template = self.model.chat_template
        self.supported_constraints = frozenset(self.model.supported_constraints)
        self.latency = latency
        self._token_ids = token_ids  # False: behave like a backend without a tokenizer
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def tokenizer(self):
        return self.model.tokenizer if self._token_ids else None

    @property
    def calls(self) -> list[dict]:
        return self.model.calls

    async def _call(self, payload: dict) -> dict:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
            return self._run(payload)
        finally:
            self.in_flight -= 1

    async def _call_stream(self, payload: dict) -> AsyncIterator[dict]:
        chunks = self._run(payload, stream=True)
        for chunk in chunks:
            await asyncio.sleep(self.latency / max(len(chunks), 1))
            yield chunk

    def _run(self, payload: dict, stream: bool = False) -> Any:
        try:
            return self.model.stream(payload) if stream else self.model.generate(payload)
        except ValueError as exc:  # the runtime's 4xx: surface it as the backend's error
            raise BackendError(str(exc)) from exc

    def flush_cache(self) -> bool:
        self.model.flush_cache()
        return True

    def get_server_info(self) -> dict:
        return {"backend": "mock", **self.model.model_info()}

    def describe(self) -> str:
        return "MockBackend"
