"""sgflow's one background event loop, where every program's model calls run as coroutines.

Program bodies are ordinary (blocking) Python: they run in the caller's thread, or for streaming
and batches in a bounded thread pool; everything they append executes here. Nothing in this
module blocks the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Optional

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None
_body_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None

BODY_POOL_SIZE = 64  # program bodies running at once for stream=True runs


def get_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use in a daemon thread."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="sgflow-loop", daemon=True).start()
            ready.wait()
            _loop = loop
        return _loop


def in_loop_thread() -> bool:
    return _loop is not None and threading.current_thread().name == "sgflow-loop"


def run_coroutine(coro: Awaitable[Any]) -> concurrent.futures.Future:
    """Schedule a coroutine on the shared loop from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run_sync(coro: Awaitable[Any], timeout: Optional[float] = None) -> Any:
    """Run a coroutine on the shared loop and wait for its result (never call from the loop)."""
    if in_loop_thread():
        raise RuntimeError("run_sync called on the sgflow loop thread; await the coroutine instead")
    return run_coroutine(coro).result(timeout)


def body_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _body_pool
    with _lock:
        if _body_pool is None:
            _body_pool = concurrent.futures.ThreadPoolExecutor(BODY_POOL_SIZE, thread_name_prefix="sgflow-body")
        return _body_pool


async def await_future(future: concurrent.futures.Future) -> Any:
    """Await a concurrent future; a finished one is read without needing a running loop (tracing)."""
    if future.done():
        return future.result()
    return await asyncio.wrap_future(future)


def drive_inline(coro: Any) -> Any:
    """Run a coroutine that never suspends to completion, synchronously (used by tracing)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a traced step tried to wait for I/O; tracing runs without a backend")
