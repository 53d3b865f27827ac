"""Jump-forward over forced text: the spliced tokens spell the forced text, are the tokenizer's own
tokenisation of it, keep the matcher in step, and save decode steps."""

import json
import random

import pytest

from runtime.constrained import compile_grammar, jump_forward
from runtime.model.tiny import build_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"enum": ["Paris", "Rome"]}},
    "required": ["name", "age", "city"],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def grammar(tokenizer):
    return compile_grammar(tokenizer, json_schema=SCHEMA)


def spell(grammar, ids):
    return b"".join(grammar.vocab.token_bytes[t] for t in ids).decode("utf-8")


def feed(matcher, ids):
    for t in ids:
        assert matcher.accept_token(t)


def apply(output, jump):
    return output[: len(output) - jump.num_rollback] + jump.new_token_ids


def test_forced_string_is_the_fixed_key_text(tokenizer, grammar):
    matcher = grammar.matcher()
    assert matcher.forced_string() == '{"name":"'
    feed(matcher, tokenizer.encode('{"name":"Ada","', add_special_tokens=False))
    assert matcher.forced_string() == 'age":'


def test_jump_from_the_start_spells_a_prefix_of_the_forced_text(tokenizer, grammar):
    matcher = grammar.matcher()
    jump = jump_forward(tokenizer, matcher, [])
    assert jump is not None and jump.num_rollback == 0
    text = spell(grammar, jump.new_token_ids)
    assert text and '{"name":"'.startswith(text)
    assert jump.new_token_ids == tokenizer.encode(text, add_special_tokens=False)
    fresh = grammar.matcher()
    feed(fresh, jump.new_token_ids)
    assert fresh.state == matcher.state  # the matcher advanced over exactly those tokens


def test_jump_retokenizes_across_the_boundary_and_rolls_back_merged_tokens(tokenizer, grammar):
    output = tokenizer.encode('{"name":"Ada"', add_special_tokens=False)
    matcher = grammar.matcher()
    feed(matcher, output)
    assert matcher.forced_string() == ',"age":'
    jump = jump_forward(tokenizer, matcher, output)
    assert jump is not None
    spliced = apply(output, jump)
    text = spell(grammar, spliced)
    assert text.startswith('{"name":"Ada"') and '{"name":"Ada","age":'.startswith(text)
    assert len(text) > len('{"name":"Ada"')
    # Natural tokenisation: the re-tokenized region is what the tokenizer makes of its text.
    kept = output[: len(output) - jump.num_rollback]
    region = text[len(spell(grammar, kept)) :]
    assert jump.new_token_ids == tokenizer.encode(region, add_special_tokens=False)[: len(jump.new_token_ids)]
    fresh = grammar.matcher()
    feed(fresh, spliced)
    assert fresh.state == matcher.state


def test_the_quote_merges_with_the_comma_in_this_vocabulary(tokenizer, grammar):
    # '",' is one token of the tiny vocabulary, so the sampled '"' is rolled back and replaced.
    assert len(tokenizer.encode('",', add_special_tokens=False)) == 1
    output = tokenizer.encode('{"name":"Ada"', add_special_tokens=False)
    matcher = grammar.matcher()
    feed(matcher, output)
    jump = jump_forward(tokenizer, matcher, output)
    assert jump.num_rollback >= 1 and jump.new_token_ids[0] == tokenizer.encode('",', add_special_tokens=False)[0]


def test_no_jump_where_nothing_is_forced_and_matcher_unchanged(tokenizer, grammar):
    output = tokenizer.encode('{"name":"Ad', add_special_tokens=False)
    matcher = grammar.matcher()
    feed(matcher, output)
    before = matcher.num_accepted
    assert jump_forward(tokenizer, matcher, output) is None
    assert matcher.num_accepted == before


def test_jump_forward_saves_decode_steps_and_keeps_outputs_valid(tokenizer, grammar):
    steps = {True: 0, False: 0}
    for use_jump in (False, True):
        for seed in range(8):
            rng = random.Random(seed)
            matcher, output = grammar.matcher(), []
            while not matcher.is_terminated():
                if use_jump:
                    jump = jump_forward(tokenizer, matcher, output)
                    if jump is not None:
                        output = apply(output, jump)
                        if matcher.is_terminated():
                            break
                allowed = [t for t in range(grammar.vocab_size) if grammar.next_state(matcher.state, t) is not None]
                token = rng.choice([t for t in allowed if b'"' in grammar.vocab.token_bytes[t]] or allowed)
                assert matcher.accept_token(token)
                output.append(token)
                steps[use_jump] += 1
            record = json.loads(spell(grammar, output))
            assert set(record) == {"name", "age", "city"}
    assert steps[True] < steps[False]

