"""Model classes by HF architecture name (`architectures[0]` in config.json).

Model modules register themselves with `@register_model("LlamaForCausalLM", ...)`; `get_model_class`
imports them on first use so `import runtime.model.registry` stays cheap.
"""

from __future__ import annotations

import importlib

MODEL_REGISTRY: dict[str, type] = {}

# Modules whose import fills MODEL_REGISTRY.
_MODEL_MODULES = ("runtime.model.llama",)


def register_model(*arch_names: str):
    if not arch_names:
        raise ValueError("register_model needs at least one architecture name")

    def deco(cls: type) -> type:
        for name in arch_names:
            if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
                raise ValueError(f"architecture {name!r} is already registered to {MODEL_REGISTRY[name].__name__}")
            MODEL_REGISTRY[name] = cls
        return cls

    return deco


def supported_architectures() -> list[str]:
    for module in _MODEL_MODULES:
        importlib.import_module(module)
    return sorted(MODEL_REGISTRY)


def get_model_class(arch: str) -> type:
    supported = supported_architectures()
    if arch not in MODEL_REGISTRY:
        raise ValueError(f"no model registered for architecture {arch!r}; supported: {', '.join(supported)}")
    return MODEL_REGISTRY[arch]
