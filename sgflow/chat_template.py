"""Chat templates as registered data: the text each role begins and ends with.

`s += user("hi")` expands to the template's user prefix, "hi", and the user suffix. The backend
picks the template from its model: first from the tokenizer's own Jinja template string (the
tokens it uses give the family away), then from the model path, else the plain `default`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    role_prefix_and_suffix: dict = field(hash=False)  # role -> (prefix, suffix)
    default_system_prompt: Optional[str] = None
    stop_str: tuple[str, ...] = ()
    # "plain": every role has its own prefix/suffix; "system_in_first_user": the system text sits
    # inside the first user turn (Llama-2 / Mistral `[INST] ... [/INST]`).
    style: str = "plain"

    def get_prefix_and_suffix(self, role: str, history: list[dict]) -> tuple[str, str]:
        """Prefix/suffix of `role`'s next message, given the messages already in the program."""
        if role not in self.role_prefix_and_suffix:
            raise ValueError(f"chat template {self.name!r} has no role {role!r}; roles: {ROLES}")
        prefix, suffix = self.role_prefix_and_suffix[role]
        if self.style == "system_in_first_user":
            if role == "system" and not history:
                return self.role_prefix_and_suffix["user"][0] + prefix, suffix
            if role == "user" and len(history) == 1 and history[0]["role"] == "system":
                return "", suffix
        return prefix, suffix

    def get_prompt(self, messages: list[dict]) -> str:
        out = ""
        for i, message in enumerate(messages):
            prefix, suffix = self.get_prefix_and_suffix(message["role"], messages[:i])
            out += prefix + message["content"] + suffix
        return out


_REGISTRY: dict[str, ChatTemplate] = {}
_MATCHERS: list[Callable[[str], Optional[str]]] = []


def register_chat_template(template: ChatTemplate) -> ChatTemplate:
    _REGISTRY[template.name] = template
    return template


def get_chat_template(name: str) -> ChatTemplate:
    if name not in _REGISTRY:
        raise KeyError(f"no chat template {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def chat_template_names() -> list[str]:
    return sorted(_REGISTRY)


def chat_template_for_model(model_path: Optional[str] = None, hf_template: Optional[str] = None) -> ChatTemplate:
    """The template for a model, from its tokenizer's template string first, then its path."""
    if hf_template:
        name = _match_hf_template(hf_template)
        if name:
            return get_chat_template(name)
    if model_path:
        for matcher in _MATCHERS:
            name = matcher(model_path.lower())
            if name:
                return get_chat_template(name)
    return get_chat_template("default")


def _match_hf_template(source: str) -> Optional[str]:
    if "<|im_start|>" in source:
        return "qwen" if "You are a helpful assistant" in source else "chatml"
    if "<|start_header_id|>" in source:
        return "llama-3-instruct"
    if "[INST]" in source:
        return "llama-2-chat" if "<<SYS>>" in source else "mistral"
    return None


def _path_matcher(func: Callable[[str], Optional[str]]) -> Callable[[str], Optional[str]]:
    _MATCHERS.append(func)
    return func


@_path_matcher
def _match_llama3(path: str) -> Optional[str]:
    if ("llama-3" in path or "llama3" in path) and "instruct" in path:
        return "llama-3-instruct"
    return None


@_path_matcher
def _match_llama2(path: str) -> Optional[str]:
    return "llama-2-chat" if "llama-2" in path and "chat" in path else None


@_path_matcher
def _match_mistral(path: str) -> Optional[str]:
    return "mistral" if ("mistral" in path or "mixtral" in path) and "instruct" in path else None


@_path_matcher
def _match_qwen(path: str) -> Optional[str]:
    return "qwen" if "qwen" in path and ("instruct" in path or "chat" in path) else None


def _chatml(name: str, system_prompt: Optional[str] = None) -> ChatTemplate:
    return ChatTemplate(
        name=name,
        role_prefix_and_suffix={r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ROLES},
        default_system_prompt=system_prompt,
        stop_str=("<|im_end|>",),
    )


register_chat_template(
    ChatTemplate(
        name="default",
        role_prefix_and_suffix={"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")},
    )
)
register_chat_template(_chatml("chatml"))
register_chat_template(_chatml("qwen", "You are a helpful assistant."))
register_chat_template(
    ChatTemplate(
        name="llama-3-instruct",
        role_prefix_and_suffix={
            r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ROLES
        },
        stop_str=("<|eot_id|>",),
    )
)
register_chat_template(
    ChatTemplate(
        name="llama-2-chat",
        role_prefix_and_suffix={
            "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": ("", " </s><s>"),
        },
        style="system_in_first_user",
    )
)
register_chat_template(
    ChatTemplate(
        name="mistral",
        role_prefix_and_suffix={
            "system": ("", "\n\n"),
            "user": ("[INST] ", " [/INST]"),
            "assistant": ("", "</s>"),
        },
        style="system_in_first_user",
    )
)
# Short names people reach for.
for _alias, _target in (("llama-3", "llama-3-instruct"), ("llama-2", "llama-2-chat")):
    _REGISTRY[_alias] = _REGISTRY[_target]
