"""The frontend backend contract. The interpreter knows nothing about HTTP; backends know nothing
about the IR: they receive a `Prompt`, the runtime's `SamplingParams` and request options.

All model calls are coroutines run on sgflow's one shared event loop (see `sgflow.loop`), so a
thousand programs in flight cost a thousand coroutines, not a thousand threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Protocol, Sequence

from runtime.sampling_params import SamplingParams

from sgflow.chat_template import ChatTemplate, get_chat_template
from sgflow.choices import ChoicesSamplingMethod

CONSTRAINTS = ("regex", "json_schema", "choices")


class Tokenizer(Protocol):
    """What exact-token mode needs from a tokenizer (see `sgflow.tokens.TokenizerAdapter`)."""

    def encode(self, text: str, add_special_tokens: bool) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Prompt:
    """The program so far. `input_ids` is set in exact-token mode: then it is authoritative and
    `text` is for display and for backends that cannot take ids."""

    text: str
    input_ids: Optional[tuple[int, ...]] = None
    messages: tuple[dict, ...] = ()  # finished role messages, OpenAI format
    role: Optional[str] = None  # the role open right now, if any
    role_text: str = ""  # text written inside the open role so far


@dataclass(frozen=True)
class GenResult:
    text: str
    output_ids: Optional[list[int]]  # None when the backend cannot report token ids
    meta_info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GenChunk:
    """One streaming step: the text and ids added since the previous chunk."""

    text: str
    output_ids: Optional[list[int]]
    meta_info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SelectResult:
    decision: str
    decision_ids: Optional[list[int]]  # the tokens the choice was scored as (exact-token mode)
    meta_info: dict = field(default_factory=dict)


class BaseBackend(ABC):
    """One model behind one small contract.

    Implementations: `mock.MockBackend` (scripted, for tests), `engine.EngineBackend` (in-process),
    `endpoint.RuntimeEndpoint` / `endpoint.Runtime` (HTTP), `openai.OpenAI` (any OpenAI API).
    """

    #: Constraints the backend enforces while decoding; the interpreter refuses the others.
    supported_constraints: frozenset = frozenset()

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        """A tokenizer matching the model's, or None. With one, the interpreter sends token ids
        (exact-token mode); without one, it sends text."""
        return None

    def get_chat_template(self) -> ChatTemplate:
        return get_chat_template("default")

    @abstractmethod
    async def generate(self, prompt: Prompt, params: SamplingParams, options: dict) -> GenResult:
        """Continue `prompt`. `options`: return_logprob, logprob_start_len, top_logprobs_num.
        meta_info follows the runtime: prompt_tokens, completion_tokens, cached_tokens,
        finish_reason {"type": "stop"|"length"|"abort", ...}, logprobs when asked."""

    @abstractmethod
    def stream(self, prompt: Prompt, params: SamplingParams, options: dict) -> AsyncIterator[GenChunk]:
        """Like generate, as an async iterator of increments; the last chunk's meta_info is final."""

    @abstractmethod
    async def select(self, prompt: Prompt, choices: Sequence[str], method: ChoicesSamplingMethod) -> SelectResult:
        """Score every choice as a continuation of `prompt` and let `method` decide."""

    async def cache_prefix(self, prompt: Prompt) -> dict:
        """Make the runtime cache `prompt` (forks and batches share it). Returns meta_info, or {}
        when the backend has no cache to warm."""
        return {}

    def flush_cache(self) -> bool:
        return False

    def get_server_info(self) -> dict:
        return {"backend": type(self).__name__}

    def shutdown(self) -> None:
        """Release what the backend started (processes, engines). Idempotent."""

    def describe(self) -> str:
        return type(self).__name__


def check_constraints(backend: BaseBackend, params: SamplingParams) -> None:
    """Refuse, loudly, a constraint the backend cannot enforce (never drop it)."""
    for name in CONSTRAINTS:
        if getattr(params, name) is not None and name not in backend.supported_constraints:
            from sgflow.errors import ConstraintNotSupportedError

            raise ConstraintNotSupportedError(
                f"{backend.describe()} cannot enforce {name}=... while decoding; run this program on "
                f"a backend that can (sgflow.Engine, sgflow.RuntimeEndpoint) or drop the constraint"
            )


def finish_reason(meta: dict) -> dict:
    """The runtime's finish_reason normalised to a dict (servers may send None or a bare string)."""
    reason: Any = meta.get("finish_reason")
    if isinstance(reason, dict):
        return reason
    if reason is None:
        return {"type": "unknown"}
    return {"type": str(reason)}
