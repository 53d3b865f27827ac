"""The three select methods on constructed logprobs where each must pick a different winner,
and the same decisions through a program on the mock backend (scripted prompt logprobs)."""

from __future__ import annotations

import pytest

import sgflow as sgl
from sgflow.choices import ChoiceScores, get_choices_method

CHOICES = ("ab", "cd", "efg")  # the mock tokenizer splits these into 2, 2 and 3 tokens
CONDITIONAL = {"ab": [-1.0, -0.1], "cd": [-0.5, -2.0], "efg": [-0.8, -0.3, -0.4]}
UNCONDITIONAL = {"ab": [-9.0, -2.5], "cd": [-9.0, -3.0], "efg": [-9.0, -0.3, -0.4]}
# means: ab -0.55, cd -1.25, efg -0.5               -> token_length_normalized picks efg
# first tokens: ab -1.0, cd -0.5, efg -0.8          -> greedy_token_selection picks cd
# mean(cond - uncond), first uncond = 0: ab 0.7, cd 0.25, efg -0.27 -> unconditional picks ab
WINNERS = {"token_length_normalized": "efg", "greedy_token_selection": "cd", "unconditional_likelihood_normalized": "ab"}


def _entries(values, first_is_none=False):
    return tuple((None if first_is_none and i == 0 else v, 100 + i, None) for i, v in enumerate(values))


def _scores() -> ChoiceScores:
    return ChoiceScores(
        CHOICES,
        tuple(_entries(CONDITIONAL[c]) for c in CHOICES),
        tuple(_entries(UNCONDITIONAL[c], first_is_none=True) for c in CHOICES),
    )


@pytest.mark.parametrize("name", sorted(WINNERS))
def test_each_method_picks_its_own_winner(name):
    decision = get_choices_method(name).decide(_scores())
    assert decision.decision == WINNERS[name]
    assert decision.meta_info["method"] == name and len(decision.meta_info["scores"]) == 3


def test_token_length_normalized_reports_mean_logprobs():
    meta = sgl.token_length_normalized.decide(_scores()).meta_info
    assert meta["scores"] == pytest.approx([-0.55, -1.25, -0.5])
    assert meta["normalized_prompt_logprobs"] == pytest.approx([-0.55, -1.25, -0.5])


def test_greedy_pads_a_short_choice_with_its_mean():
    scores = ChoiceScores(("a", "bb"), (_entries([-0.5]), _entries([-0.5, -0.2])))
    # "a" is padded with its mean -0.5; "bb" wins on the second token
    assert sgl.greedy_token_selection.decide(scores).decision == "bb"
    assert sgl.greedy_token_selection.scores(scores) == [[-0.5, -0.5], [-0.5, -0.2]]


def test_ties_go_to_the_first_choice():
    scores = ChoiceScores(("x", "y"), (_entries([-1.0]), _entries([-1.0])))
    assert sgl.token_length_normalized.decide(scores).decision == "x"


def test_unconditional_method_requires_unconditional_logprobs():
    scores = ChoiceScores(CHOICES, tuple(_entries(CONDITIONAL[c]) for c in CHOICES))
    with pytest.raises(ValueError, match="unconditional"):
        sgl.unconditional_likelihood_normalized.decide(scores)


def test_unknown_method_name_is_refused():
    with pytest.raises(ValueError, match="token_length_normalized"):
        get_choices_method("majority_vote")


@pytest.mark.parametrize("name", sorted(WINNERS))
def test_select_in_a_program_uses_the_method(name):
    backend = sgl.MockBackend(choice_logprobs=CONDITIONAL, unconditional_logprobs=UNCONDITIONAL)

    @sgl.function
    def pick(s):
        s += "Pick one:" + sgl.select("pick", list(CHOICES), choices_method=name)

    state = pick.run(backend=backend)
    assert state["pick"] == WINNERS[name]
    assert state.text() == "Pick one:" + WINNERS[name]
    meta = state.get_meta_info("pick")
    assert [len(x) for x in meta["input_token_logprobs"]] == [2, 2, 3]
    scoring = [c for c in backend.calls if c["payload"].get("return_logprob")]
    assert len(scoring) == (6 if name == "unconditional_likelihood_normalized" else 3)
