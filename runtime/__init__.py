"""The sgflow runtime: paged KV memory, a radix prefix cache, continuous batching, and an engine.

`from runtime import Engine` imports torch lazily, so `runtime.sampling_params` stays light.
"""

__all__ = ["Engine", "EngineConfig", "SamplingParams"]


def __getattr__(name):
    if name == "Engine":
        from runtime.engine import Engine

        return Engine
    if name == "EngineConfig":
        from runtime.config import EngineConfig

        return EngineConfig
    if name == "SamplingParams":
        from runtime.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
