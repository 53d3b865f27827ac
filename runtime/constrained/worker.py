"""What one grammar compile does, and a killable child process that does it.

`compile_index` is the whole pipeline (spec → regex → ByteDFA → TokenIndex); it runs in-process for
`compile_grammar` and inside `CompileWorker`'s child for the server's GrammarCompiler. The child is
what makes a pathological spec harmless: past the timeout it is killed (and respawned on the next
job), and an address-space limit turns runaway allocation into a MemoryError there instead of the
OOM killer taking the server. The child imports numpy and outlines-core only (no torch).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
import pickle
from typing import Any, Optional

from runtime.constrained.byte_dfa import regex_to_byte_dfa
from runtime.constrained.spec import grammar_regex
from runtime.constrained.token_index import TokenIndex, build_token_index
from runtime.constrained.vocabulary import TokenVocabulary

STARTUP_TIMEOUT_S = 120.0


def compile_index(kind: str, spec: Any, vocab: TokenVocabulary, whitespace_pattern: Optional[str] = None) -> TokenIndex:
    """Compile one constraint to a token index (ValueError naming the problem if it cannot)."""
    regex = grammar_regex(kind, spec, whitespace_pattern)
    return build_token_index(regex_to_byte_dfa(regex), vocab)


class CompileWorker:
    """One child process compiling for one vocabulary. Not thread-safe: one caller thread each."""

    def __init__(self, vocab: TokenVocabulary, memory_limit_bytes: Optional[int] = None) -> None:
        self._payload = pickle.dumps(vocab, protocol=pickle.HIGHEST_PROTOCOL)
        self._memory_limit = memory_limit_bytes
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a threaded (torch) parent
        self._proc = None
        self._conn = None

    def compile(self, kind: str, spec: Any, whitespace_pattern: Optional[str], timeout_s: float) -> TokenIndex:
        """Run one compile in the child; ValueError on a bad spec, a timeout or a crashed child."""
        self._ensure_started()
        self._conn.send((kind, spec, whitespace_pattern))
        if not self._conn.poll(timeout_s):
            self.close()  # a runaway compile: kill it, the next job gets a fresh child
            raise ValueError(f"compiling the {kind} took longer than {timeout_s:g} s")
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            self.close()
            raise ValueError(f"compiling the {kind} crashed the compile worker (out of memory?)") from None
        if status != "ok":
            raise ValueError(payload)
        return payload

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
            self._conn.close()
        self._proc = self._conn = None

    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self.close()
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main, args=(child, self._payload, self._memory_limit), daemon=True, name="sgflow-grammar"
        )
        with _main_module_hidden():
            proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        if not parent.poll(STARTUP_TIMEOUT_S) or parent.recv() != "ready":
            self.close()
            raise ValueError("the grammar compile worker did not start")


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden():
    """A spawned child re-imports the parent's `__main__` script unless it cannot find it: a user
    script without an `if __name__ == "__main__":` guard would then run again in the child (and
    start engines there). The child needs nothing from `__main__`, so hide it while starting."""
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    with _MAIN_LOCK:
        try:
            for name in saved:
                setattr(main, name, None) if name == "__spec__" else delattr(main, name)
            yield
        finally:
            for name, value in saved.items():
                setattr(main, name, value)


def _child_main(conn, payload: bytes, memory_limit: Optional[int]) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C / kernel stop is not ours
    if memory_limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    vocab = pickle.loads(payload)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind, spec, whitespace_pattern = message
        try:
            reply = ("ok", compile_index(kind, spec, vocab, whitespace_pattern))
        except ValueError as exc:
            reply = ("error", str(exc))
        except MemoryError:
            reply = ("error", f"compiling the {kind} ran out of memory (limit {memory_limit} bytes)")
        except RecursionError:
            reply = ("error", f"the {kind} nests too deeply to compile")
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            reply = ("error", f"compiling the {kind} failed: {type(exc).__name__}: {exc}")
        conn.send(reply)
