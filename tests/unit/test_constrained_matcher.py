"""GrammarMatcher / CompiledGrammar behaviour the scheduler relies on (tiny byte-level tokenizer)."""

import pytest
import torch

from runtime.constrained import allocate_token_bitmask, compile_grammar
from runtime.model.tiny import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def allowed(matcher, width):
    bitmask = allocate_token_bitmask(1, width * 32)
    matcher.fill_mask(bitmask, 0)
    bits = ((bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return set(torch.nonzero(bits).flatten().tolist())


def test_accepts_complete_matches_with_optional_trailing_eos(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"[0-9]{1,3}(\.[0-9]+)?")
    eos = tokenizer.eos_token_id
    assert grammar.accepts(ids(tokenizer, "42"))
    assert grammar.accepts(ids(tokenizer, "3.14") + [eos])
    assert not grammar.accepts(ids(tokenizer, "3."))  # a prefix, not a match
    assert not grammar.accepts(ids(tokenizer, "1234"))
    assert not grammar.accepts(ids(tokenizer, "4a"))
    assert not grammar.accepts([eos] + ids(tokenizer, "4"))
    assert not grammar.accepts(ids(tokenizer, "4") + [eos, eos])


def test_eos_is_allowed_only_in_accepting_states(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"ab+")
    eos = tokenizer.eos_token_id
    matcher = grammar.matcher()
    assert eos not in allowed(matcher, grammar.num_words) and not matcher.accept_token(eos)
    assert all(matcher.accept_token(t) for t in ids(tokenizer, "ab"))
    assert matcher.can_finish() and not matcher.is_terminated()  # more b's may follow
    assert eos in allowed(matcher, grammar.num_words)
    assert matcher.accept_token(eos) and matcher.is_terminated()
    assert allowed(matcher, grammar.num_words) == {eos}
    assert not matcher.accept_token(ids(tokenizer, "b")[0])


def test_special_tokens_are_never_allowed(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"(.|\n)*")
    mask = allowed(grammar.matcher(), grammar.num_words)
    specials = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    assert specials and not mask & specials
    assert tokenizer.eos_token_id in mask


def test_terminated_when_the_match_is_complete_and_nothing_may_follow(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"(yes|no)")
    matcher = grammar.matcher()
    for t in ids(tokenizer, "ye"):
        assert matcher.accept_token(t)
    assert not matcher.is_terminated() and not matcher.can_finish()
    assert matcher.accept_token(ids(tokenizer, "s")[0])
    assert matcher.is_terminated() and matcher.can_finish()


def test_rejected_token_leaves_state_unchanged(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"[a-c]+")
    matcher = grammar.matcher()
    assert matcher.accept_token(ids(tokenizer, "a")[0])
    before = allowed(matcher, grammar.num_words)
    assert not matcher.accept_token(ids(tokenizer, "z")[0])
    assert not matcher.accept_token(10**6) and not matcher.accept_token(-1)
    assert allowed(matcher, grammar.num_words) == before and matcher.num_accepted == 1


def test_rollback_restores_earlier_masks_including_after_eos(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"\{\"k\":[0-9]+\}")
    tokens = ids(tokenizer, '{"k":12}')
    matcher = grammar.matcher()
    masks = [allowed(matcher, grammar.num_words)]
    for t in tokens:
        assert matcher.accept_token(t)
        masks.append(allowed(matcher, grammar.num_words))
    assert matcher.accept_token(tokenizer.eos_token_id)
    matcher.rollback(1)  # undo EOS
    assert matcher.num_accepted == len(tokens)
    assert allowed(matcher, grammar.num_words) == masks[-1] == {tokenizer.eos_token_id}
    matcher.rollback(3)
    assert allowed(matcher, grammar.num_words) == masks[-4]
    for t in tokens[-3:]:
        assert matcher.accept_token(t)
    assert matcher.can_finish()
    with pytest.raises(ValueError):
        matcher.rollback(len(tokens) + 1)


def test_copies_are_independent(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"(cat|dog) (runs|walks)")
    matcher = grammar.matcher()
    for t in ids(tokenizer, "cat "):
        assert matcher.accept_token(t)
    fork = matcher.copy()
    for t in ids(tokenizer, "runs"):
        assert fork.accept_token(t)
    assert fork.is_terminated() and not matcher.can_finish()
    for t in ids(tokenizer, "walks"):
        assert matcher.accept_token(t)
    assert matcher.is_terminated()
    fork.rollback(fork.num_accepted)
    assert fork.accept_token(ids(tokenizer, "dog")[0])


def test_choices_match_exactly_one_literal_choice(tokenizer):
    choices = ["Paris", "London", "Lon", "a.b*c", "日本語"]
    grammar = compile_grammar(tokenizer, choices=choices)
    for choice in choices:
        assert grammar.accepts(ids(tokenizer, choice)), choice
    for other in ["Par", "Londo", "aXb*c", "Paris ", "LondonLondon"]:
        assert not grammar.accepts(ids(tokenizer, other)), other
    matcher = grammar.matcher()
    for t in ids(tokenizer, "Lon"):
        assert matcher.accept_token(t)
    assert matcher.can_finish() and not matcher.is_terminated()  # "Lon" or "London"


def test_fill_mask_writes_only_its_row_and_zeroes_words_past_the_vocabulary(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r"[0-9]+")
    wide = allocate_token_bitmask(3, grammar.vocab_size + 100)  # model vocab padded past the tokenizer's
    grammar.matcher().fill_mask(wide, 1)
    assert (wide[0] == -1).all() and (wide[2] == -1).all()
    assert (wide[1, grammar.num_words :] == 0).all()
    digits = {ids(tokenizer, str(d))[0] for d in range(10)}
    row = allowed_row(wide[1])
    assert digits <= row and all(tokenizer.decode([t]).isdigit() for t in row)
    narrow = allocate_token_bitmask(1, 64)  # logits narrower than the tokenizer: the first words only
    grammar.matcher().fill_mask(narrow, 0)
    assert allowed_row(narrow[0]) == {t for t in row if t < 64}


def allowed_row(words):
    bits = ((words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten()
    return set(torch.nonzero(bits).flatten().tolist())


def test_forced_string_is_the_text_every_completion_writes_next(tokenizer):
    grammar = compile_grammar(tokenizer, regex=r'\{"name":"[a-z]+"(,"age":[0-9]+)?\}')
    matcher = grammar.matcher()
    assert matcher.forced_string() == '{"name":"'
    for t in ids(tokenizer, '{"name":"bo'):
        assert matcher.accept_token(t)
    assert matcher.forced_string() == ""
    for t in ids(tokenizer, 'b",'):
        assert matcher.accept_token(t)
    assert matcher.forced_string() == '"age":'


def test_exactly_one_constraint_must_be_given(tokenizer):
    with pytest.raises(ValueError):
        compile_grammar(tokenizer)
    with pytest.raises(ValueError):
        compile_grammar(tokenizer, regex="a", choices=["a"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"regex": "(a|b"},
        {"regex": "[z-a]"},
        {"regex": r"a(?=b)"},
        {"regex": r"(a)\1"},
        {"regex": r"\bword"},
        {"regex": "a{5000}"},
        {"json_schema": "{not json"},
        {"json_schema": {"type": "string", "format": "no-such-format"}},
        {"json_schema": {"type": "integer", "multipleOf": 3}},
        {"json_schema": {"type": "integer", "minimum": 5, "maximum": 1}},
        {"choices": []},
        {"choices": ["ok", ""]},
    ],
)
def test_bad_specs_raise_value_error_with_a_reason(tokenizer, kwargs):
    with pytest.raises(ValueError) as info:
        compile_grammar(tokenizer, **kwargs)
    assert str(info.value)


def test_tokenizer_can_be_a_local_directory(tmp_path):
    build_tokenizer(str(tmp_path))
    grammar = compile_grammar(str(tmp_path), regex="[0-9]+")
    assert grammar.vocab_size == 384
