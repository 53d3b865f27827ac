"""The HTTP server: native /generate and an OpenAI-compatible API over the in-process Engine.

`create_app(engine, ...)` builds the app; `python -m runtime serve --model PATH` (launch.main) runs it.
"""

__all__ = ["create_app"]


def __getattr__(name):
    if name == "create_app":
        from runtime.server.app import create_app

        return create_app
    raise AttributeError(f"module 'runtime.server' has no attribute {name!r}")
