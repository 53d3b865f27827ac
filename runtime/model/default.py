"""The embedded default model: used when no model_path is given.

A trained small model ships in runtime/assets/default_model once it exists; until then a tiny random
Llama is built on the fly (nothing is downloaded) and kept in the user's cache directory.
"""

from __future__ import annotations

import os

_ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "default_model")


def default_model_path() -> str:
    if os.path.isfile(os.path.join(_ASSET_DIR, "config.json")):
        return _ASSET_DIR
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sgflow", "tiny-llama-v1")
    if not os.path.isfile(os.path.join(cache, "config.json")):
        from runtime.model.tiny import build_tiny_model

        build_tiny_model(cache, arch="llama", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                         intermediate_size=256, max_position_embeddings=2048)
    return cache
