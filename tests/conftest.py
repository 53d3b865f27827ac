"""Shared fixtures: tiny random models built once per session (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A factory: tiny_model_dir("qwen3") → path of a saved random Qwen3 model (built once)."""
    from runtime.model.tiny import build_tiny_model

    built: dict[tuple, str] = {}

    def get(arch: str = "llama", **kwargs) -> str:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in built:
            path = str(tmp_path_factory.mktemp(f"tiny_{arch}"))
            built[key] = build_tiny_model(path, arch=arch, **kwargs)
        return built[key]

    return get
