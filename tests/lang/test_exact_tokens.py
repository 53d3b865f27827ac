"""Exact token boundaries: generated ids are reused as-is, so every call's input extends the last.

The mock tokenizer merges ".\\n" into one token, so re-tokenising "generated text + what follows"
drifts from the ids the model produced, exactly the failure exact-token mode avoids."""

from __future__ import annotations

import pytest

import sgflow as sgl
from sgflow.backends.mock_model import EOS, MockTokenizer
from sgflow.tokens import align_output
from sgflow.transcript import Transcript

TOK = MockTokenizer()


def test_align_keeps_the_tokens_behind_a_trimmed_stop_string():
    ids = TOK.encode("Paris. Next", add_special_tokens=False)  # the runtime generated through ". "
    kept, covered = align_output(TOK, [], "Paris", ids)
    assert TOK.decode(kept) == "Paris" and covered == 5


def test_align_drops_a_trailing_eos():
    ids = TOK.encode("Paris", add_special_tokens=False) + [EOS]
    kept, covered = align_output(TOK, [], "Paris", ids)
    assert kept == ids[:-1] and covered == 5


def test_align_gives_up_when_the_ids_do_not_spell_the_text():
    kept, covered = align_output(TOK, [], "London", TOK.encode("Paris", add_special_tokens=False))
    assert (kept, covered) == ([], 0)


def test_transcript_leaves_an_unmatched_tail_pending_and_tokenises_it_with_what_follows():
    t = Transcript()
    t.append("Q: capital?\nA:")
    prompt_ids = list(t.prompt(TOK).input_ids)
    t.append(" Paris")
    t.commit_output(len("Q: capital?\nA:"), TOK.encode(" Par", add_special_tokens=False), TOK)
    assert t.ids == prompt_ids + TOK.encode(" Par", add_special_tokens=False)
    t.append(".\nQ:")
    assert list(t.prompt(TOK).input_ids) == t.ids
    assert t.ids[len(prompt_ids) + 4:] == TOK.encode("is.\nQ:", add_special_tokens=False)


@sgl.function
def conversation(s, turns):
    s += sgl.system("You answer in one sentence.")
    for i, turn in enumerate(turns):
        s += sgl.user(turn)
        s += sgl.assistant(sgl.gen(f"answer_{i}", max_tokens=48, temperature=0))


TURNS = ["Hello", "Tell me a story", "Is the sky blue?", "Hello again"]
RULES = {"Hello": " Hi there.", "Tell me a story": " A cat sat.", "Is the sky blue": " Yes it is."}


def _run(exact: bool):
    backend = sgl.MockBackend(RULES)  # "default" template: an answer is followed by "\n"
    state = conversation.run(turns=TURNS, backend=backend, exact_tokens=exact)
    return state, backend


def test_multi_turn_cache_hit_rate_with_and_without_exact_tokens():
    exact_state, exact_backend = _run(True)
    text_state, _ = _run(False)
    assert exact_state.text() == text_state.text()
    exact, text = exact_state.get_meta_info(), text_state.get_meta_info()
    print(f"\nmulti-turn cache hit rate: exact tokens {exact['cache_hit_rate']:.3f} "
          f"({exact['cached_tokens']}/{exact['prompt_tokens']}), re-tokenised text "
          f"{text['cache_hit_rate']:.3f} ({text['cached_tokens']}/{text['prompt_tokens']})")
    assert exact["cache_hit_rate"] > text["cache_hit_rate"]
    calls = exact_backend.calls
    for before, after in zip(calls, calls[1:]):  # every turn re-reads all of the previous one
        assert after["input_ids"][: len(before["input_ids"])] == before["input_ids"]
        assert after["meta_info"]["cached_tokens"] >= before["meta_info"]["prompt_tokens"]


def test_text_mode_sends_text_and_drifts_at_the_join():
    state, backend = _run(False)
    first, second = backend.calls[0], backend.calls[1]
    assert first["input_ids"] is None and "text" in first["payload"]
    sent_ids = TOK.encode(first["payload"]["text"], True)
    second_ids = TOK.encode(second["payload"]["text"], True)
    generated = TOK.encode(" Hi there.", False)
    assert second_ids[: len(sent_ids) + len(generated)] != sent_ids + generated  # ".\n" merged


def test_exact_tokens_can_be_switched_off_globally(monkeypatch):
    monkeypatch.setattr(sgl.global_config, "exact_tokens", False)
    state, backend = _run(None)
    assert all(c["input_ids"] is None for c in backend.calls)
    assert state.token_ids() == []


def test_engine_multi_turn_reuses_every_previous_token(request):
    pytest.importorskip("runtime.engine")
    backend = request.getfixturevalue("engine_backend")
    rates = {}
    for exact in (True, False):
        backend.flush_cache()
        state = conversation.run(turns=TURNS, backend=backend, exact_tokens=exact)
        metrics = state.get_meta_info()
        rates[exact] = metrics["cache_hit_rate"]
        if exact:
            calls = metrics["calls"]
            for before, after in zip(calls, calls[1:]):
                assert after["cached_tokens"] >= before["prompt_tokens"]
    print(f"\nengine multi-turn cache hit rate: exact {rates[True]:.3f}, re-tokenised {rates[False]:.3f}")
    assert rates[True] >= rates[False]
