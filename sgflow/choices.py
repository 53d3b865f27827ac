"""How `select` turns per-token logprobs of each choice into a decision: strategy objects.

A backend scores every choice (the logprob of each of its tokens after the shared prefix, and for
some methods without it) and hands a `ChoiceScores` to the method; the method only decides.

    token_length_normalized              mean token logprob (default; SGLang's default too)
    greedy_token_selection               compare token by token; a short choice is padded with its mean
    unconditional_likelihood_normalized  mean of (logprob with prefix - logprob without prefix)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Sequence

# One token's logprob entry as the runtime returns it: (logprob or None, token_id, text or None).
TokenLogprob = Sequence[Any]


@dataclass(frozen=True)
class ChoiceScores:
    """Per-choice token logprobs. `unconditional_token_logprobs` is set only when a method asks."""

    choices: tuple[str, ...]
    input_token_logprobs: tuple[tuple[TokenLogprob, ...], ...]
    unconditional_token_logprobs: Optional[tuple[tuple[TokenLogprob, ...], ...]] = None

    @property
    def normalized_prompt_logprobs(self) -> list[float]:
        return [_mean(_values(entries)) for entries in self.input_token_logprobs]


@dataclass(frozen=True)
class ChoicesDecision:
    decision: str
    meta_info: dict


class ChoicesSamplingMethod(ABC):
    name: str = "abstract"
    requires_unconditional_logprobs: bool = False

    def decide(self, scores: ChoiceScores) -> ChoicesDecision:
        """Pick a choice; meta_info holds the method's per-choice scores under "scores"."""
        if not scores.choices:
            raise ValueError("select needs at least one choice")
        per_choice = self.scores(scores)
        best = max(range(len(per_choice)), key=lambda i: (_rank_key(per_choice[i]), -i))
        meta = {
            "method": self.name,
            "choices": list(scores.choices),
            "scores": per_choice,
            "normalized_prompt_logprobs": scores.normalized_prompt_logprobs,
            "input_token_logprobs": [list(x) for x in scores.input_token_logprobs],
            "output_token_logprobs": [[] for _ in scores.choices],
        }
        if scores.unconditional_token_logprobs is not None:
            meta["unconditional_token_logprobs"] = [list(x) for x in scores.unconditional_token_logprobs]
        return ChoicesDecision(decision=scores.choices[best], meta_info=meta)

    @abstractmethod
    def scores(self, scores: ChoiceScores) -> list:
        """One comparable score per choice; the largest wins, ties go to the earliest choice."""

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesSamplingMethod):
    name = "token_length_normalized"

    def scores(self, scores: ChoiceScores) -> list[float]:
        return scores.normalized_prompt_logprobs


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Eliminate, position by position, every choice whose token logprob is below the best.

    The score reported per choice is its row of the padded matrix; ranking compares rows
    lexicographically, which is exactly the elimination order.
    """

    name = "greedy_token_selection"

    def scores(self, scores: ChoiceScores) -> list[list[float]]:
        rows = [_values(entries) for entries in scores.input_token_logprobs]
        width = max((len(r) for r in rows), default=0)
        return [r + [_mean(r)] * (width - len(r)) for r in rows]


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def scores(self, scores: ChoiceScores) -> list[float]:
        if scores.unconditional_token_logprobs is None:
            raise ValueError(f"{self.name} needs unconditional token logprobs from the backend")
        out = []
        for cond, uncond in zip(scores.input_token_logprobs, scores.unconditional_token_logprobs):
            if len(cond) != len(uncond):
                raise ValueError("conditional and unconditional logprobs must cover the same tokens")
            # The first token has no context without the prefix: the runtime reports None -> 0.
            diffs = [(c[0] or 0.0) - (u[0] or 0.0) for c, u in zip(cond, uncond)]
            out.append(_mean(diffs))
        return out


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

CHOICES_METHODS = {
    m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
}


def get_choices_method(method: Any) -> ChoicesSamplingMethod:
    """Accept a method object or its name."""
    if isinstance(method, ChoicesSamplingMethod):
        return method
    if isinstance(method, str) and method in CHOICES_METHODS:
        return CHOICES_METHODS[method]
    raise ValueError(f"unknown choices_method {method!r}; use one of {sorted(CHOICES_METHODS)}")


def _values(entries: Sequence[TokenLogprob]) -> list[float]:
    return [e[0] for e in entries if e[0] is not None]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")


def _rank_key(score: Any) -> Any:
    return tuple(score) if isinstance(score, list) else score
