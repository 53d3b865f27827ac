"""Running programs: one (`run_program`), many (`run_batch`, bounded threads + tqdm), streaming.

A program body is ordinary Python that may block on `s["x"]`: it runs in the caller's thread
(`run`), in the shared body pool (`run(stream=True)`), or in a pool of `num_threads` (`run_batch`).
Its model calls run as coroutines on the shared loop either way.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Optional

from sgflow.global_config import global_config, resolve_backend
from sgflow.interpreter import Executor
from sgflow.loop import body_pool, run_sync
from sgflow.state import ProgramState
from sgflow.transcript import Transcript


def run_program(program: Any, backend: Any, args: tuple, kwargs: dict, defaults: Any, *, stream: bool = False, exact_tokens: Optional[bool] = None) -> ProgramState:
    """Run one program. Not streaming: returns when it has finished, raising its error if any.
    Streaming: returns at once; read with state.text_iter()."""
    state = new_state(resolve_backend(backend), defaults, stream=stream, exact_tokens=exact_tokens)
    if stream:
        body_pool().submit(run_body, program, state, args, kwargs)
        return state
    run_body(program, state, args, kwargs)
    state._executor.finished.result()
    if state._executor.error is not None:
        raise state._executor.error
    return state


def new_state(backend: Any, defaults: Any, *, stream: bool = False, exact_tokens: Optional[bool] = None) -> ProgramState:
    exact = global_config.exact_tokens if exact_tokens is None else exact_tokens
    return ProgramState(Executor(backend, defaults, stream=stream, exact_tokens=exact))


def run_body(program: Any, state: ProgramState, args: tuple, kwargs: dict) -> None:
    try:
        state.ret_value = program.func(state, *args, **{**program.bind_arguments, **kwargs})
    except BaseException as exc:
        state._executor.fail_from_body(exc)
        raise
    finally:
        state._executor.end()


def run_batch(program: Any, backend: Any, batch_kwargs: list[dict], defaults: Any, *, num_threads: Any = "auto", progress_bar: bool = False, exact_tokens: Optional[bool] = None) -> list[ProgramState]:
    """Run the program once per kwargs dict; returns the states in order once all have finished.

    A program that raises in its body (misuse) makes run_batch raise; one that fails in the
    backend keeps its error in its state (state.error(); reading it raises)."""
    if not batch_kwargs:
        return []
    backend = resolve_backend(backend)
    if len(batch_kwargs) > 1 and global_config.enable_precache_with_tracing:
        precache(program, backend, exact_tokens)
    if num_threads == "auto":
        num_threads = max(64, 16 * (os.cpu_count() or 1))
    num_threads = max(1, min(int(num_threads), len(batch_kwargs)))
    bar = _progress_bar(len(batch_kwargs)) if progress_bar else None
    states = [new_state(backend, defaults, exact_tokens=exact_tokens) for _ in batch_kwargs]
    for state in states:
        if bar is not None:
            state._executor.finished.add_done_callback(lambda _: bar.update(1))
    with concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="sgflow-batch") as pool:
        bodies = [pool.submit(run_body, program, st, (), kw) for st, kw in zip(states, batch_kwargs)]
        for body in bodies:
            body.result()
    for state in states:
        state._executor.finished.result()
    if bar is not None:
        bar.close()
    return states


def precache(program: Any, backend: Any, exact_tokens: Optional[bool] = None) -> dict:
    """Cache the constant prefix shared by every run of `program` (found by tracing)."""
    from sgflow.tracer import extract_prefix

    prefix = extract_prefix(program, backend)
    if len(prefix) < global_config.min_precache_chars:
        return {}
    exact = global_config.exact_tokens if exact_tokens is None else exact_tokens
    transcript = Transcript()
    transcript.append(prefix)
    return run_sync(backend.cache_prefix(transcript.prompt(backend.tokenizer if exact else None)))


def _progress_bar(total: int) -> Any:
    import tqdm

    return tqdm.tqdm(total=total, desc="programs")
