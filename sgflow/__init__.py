"""sgflow: structured generation programs in plain Python (SGLang-frontend compatible).

    import sgflow as sgl

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=64))

    sgl.set_default_backend(sgl.RuntimeEndpoint("http://localhost:30000"))
    print(qa.run(question="Why is the sky blue?")["answer"])

Importing sgflow pulls in neither torch nor the runtime; backends load what they need when built.
"""

from sgflow.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from sgflow.chat_template import ChatTemplate, get_chat_template, register_chat_template
from sgflow.choices import (
    ChoicesDecision,
    ChoicesSamplingMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sgflow.errors import (
    BackendError,
    ConstraintNotSupportedError,
    NoBackendError,
    ProgramMisuseError,
    SgflowError,
)
from sgflow.function import Function
from sgflow.global_config import global_config
from sgflow.state import ProgramState, ProgramStateGroup

# Backends load lazily: RuntimeEndpoint needs httpx, OpenAI the openai package, Engine the runtime.
_LAZY = {
    "Engine": ("sgflow.backends.engine", "EngineBackend"),
    "RuntimeEndpoint": ("sgflow.backends.endpoint", "RuntimeEndpoint"),
    "Runtime": ("sgflow.backends.endpoint", "Runtime"),
    "OpenAI": ("sgflow.backends.openai", "OpenAI"),
    "MockBackend": ("sgflow.backends.mock", "MockBackend"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sgflow' has no attribute {name!r}")


__all__ = [
    "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int",
    "gen_string", "get_server_info", "image", "select", "set_default_backend", "system", "system_begin",
    "system_end", "user", "user_begin", "user_end", "video", "ChatTemplate", "get_chat_template",
    "register_chat_template", "ChoicesDecision", "ChoicesSamplingMethod", "greedy_token_selection",
    "token_length_normalized", "unconditional_likelihood_normalized", "BackendError",
    "ConstraintNotSupportedError", "NoBackendError", "ProgramMisuseError", "SgflowError", "Function",
    "global_config", "ProgramState", "ProgramStateGroup", *_LAZY,
]
