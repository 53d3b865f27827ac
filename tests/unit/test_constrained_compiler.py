"""GrammarCompiler: cached, off-thread compilation that a pathological spec cannot wedge."""

import time

import pytest

from runtime.constrained import GrammarCompiler
from runtime.model.tiny import build_tokenizer

TIMEOUT_S = 2.0
SLOW_REGEX = r"([a-z]{1,1000}){1,40}"  # within the size limits, but minutes of automaton building


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(str(path))
    with GrammarCompiler(str(path), max_workers=2, timeout_s=TIMEOUT_S) as compiler:
        yield compiler


def encode(compiler, text):
    return compiler.tokenizer.encode(text, add_special_tokens=False)


def test_compiles_off_thread_and_caches_by_kind_and_spec(compiler):
    future = compiler.submit("regex", r"[0-9]+")
    grammar = future.result(timeout=60)
    assert grammar.accepts(encode(compiler, "123")) and not grammar.accepts(encode(compiler, "12a"))
    assert compiler.submit("regex", r"[0-9]+") is future
    assert compiler.get("regex", r"[0-9]+") is grammar


def test_equal_schemas_share_one_entry_whatever_their_form(compiler):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    grammar = compiler.get("json_schema", schema)
    assert compiler.get("json_schema", '{"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}') is grammar
    assert grammar.accepts(encode(compiler, '{"ok":true}'))
    assert compiler.get("choices", ("red", "green")).accepts(encode(compiler, "green"))


def test_a_failed_compile_is_cached_too(compiler):
    with pytest.raises(ValueError, match="invalid regex"):
        compiler.get("regex", "(unclosed")
    future = compiler.submit("regex", "(unclosed")
    assert future.done() and isinstance(future.exception(), ValueError)
    with pytest.raises(ValueError, match="unknown constraint kind"):
        compiler.get("grammar", "x")


@pytest.mark.parametrize(
    "kind, spec, outcome",
    [
        ("regex", "(a+)+b", "ok"),
        ("regex", "a{1000000}", "repetition count"),
        ("regex", "((a{100}){100}){100}", "expands"),
        ("json_schema", "chain", "nests deeper"),
        ("json_schema", "shared", "nodes"),
    ],
)
def test_explosive_specs_compile_fast_or_fail_clearly(compiler, kind, spec, outcome):
    if spec == "chain":  # a oneOf nested 40 deep
        spec = {"type": "integer"}
        for i in range(40):
            spec = {"oneOf": [{"type": "null"}, {"type": "object", "properties": {f"k{i}": spec}, "required": [f"k{i}"]}]}
    elif spec == "shared":  # small in memory, 2**30 nodes as JSON
        spec = {"type": "integer"}
        for _ in range(30):
            spec = {"oneOf": [spec, {"type": "array", "items": spec}]}
    start = time.monotonic()
    if outcome == "ok":
        assert compiler.get(kind, spec).accepts(encode(compiler, "aaab"))
    else:
        with pytest.raises(ValueError, match=outcome):
            compiler.get(kind, spec)
    assert time.monotonic() - start < TIMEOUT_S + 30  # 30 s: a worker may still be starting


def test_runaway_compile_times_out_and_the_compiler_keeps_serving(compiler):
    warm = [compiler.submit("regex", f"warm-up-{i}") for i in range(2)]  # start both workers first
    assert all(f.result(timeout=60) for f in warm)
    slow = compiler.submit("regex", SLOW_REGEX)
    time.sleep(0.2)
    start = time.monotonic()
    fast = compiler.get("regex", r"[a-f]{2}", timeout=TIMEOUT_S)  # served by the other worker meanwhile
    assert fast.accepts(encode(compiler, "be")) and time.monotonic() - start < TIMEOUT_S
    with pytest.raises(ValueError, match=f"took longer than {TIMEOUT_S:g} s"):
        slow.result(timeout=TIMEOUT_S + 30)
    assert compiler.get("regex", r"x[0-9]", timeout=60).accepts(encode(compiler, "x7"))  # respawned worker
    assert compiler.submit("regex", SLOW_REGEX) is slow  # the timeout is cached: not retried


def test_compile_workers_never_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, runtime.constrained.worker; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "False"
