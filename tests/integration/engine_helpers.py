"""Helpers for engine tests: an HF greedy reference and an engine that is checked whole on close."""

from __future__ import annotations

import contextlib

import torch


def hf_greedy(model_dir: str, prompts_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation by HF transformers, recomputing the full sequence each step (no cache):
    the plainest reference there is. EOS does not stop it (compare with ignore_eos=True)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for ids in prompts_ids:
            seq = list(ids)
            for _ in range(max_new_tokens):
                logits = model(torch.tensor([seq])).logits[0, -1]
                seq.append(int(torch.argmax(logits)))
            outs.append(seq[len(ids):])
    return outs


def hf_logits(model_dir: str, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@contextlib.contextmanager
def checked_engine(**kwargs):
    """An Engine whose KV memory must be whole (free + cached == total, nothing locked) at the end."""
    from runtime import Engine

    engine = Engine(**kwargs)
    try:
        yield engine
        engine.check_integrity()
    finally:
        engine.shutdown()
