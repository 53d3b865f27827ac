"""Constrained decoding: regex / JSON schema / choices compiled to token-level FSMs, packed logit
bitmasks, and jump-forward over forced text.

    from runtime.constrained import compile_grammar, allocate_token_bitmask, apply_token_bitmask_
    grammar = compile_grammar(tokenizer, json_schema=schema)       # or GrammarCompiler (cached, off-loop)
    matcher = grammar.matcher()                                     # one per request
    bitmask = allocate_token_bitmask(batch_size, logits.shape[-1])
    matcher.fill_mask(bitmask, row); apply_token_bitmask_(logits, bitmask.to(logits.device), rows)
    matcher.accept_token(next_id)
    jump = jump_forward(tokenizer, matcher, output_ids)             # None, or tokens to splice in

Pipeline: spec.py / schema.py (spec → regex, with limits) → regex_dfa.py (character DFA) →
minimise.py → byte_dfa.py (UTF-8 byte DFA) → token_index.py (masks per state over the vocabulary
trie, trie.py) → fsm.py (grammar, matcher). worker.py / cache.py run compiles in killable child
processes. Nothing imported here pulls in torch (compile workers import this package); the bitmask
helpers load torch when first used.
"""

from __future__ import annotations

from runtime.constrained.cache import GrammarCompiler
from runtime.constrained.fsm import CompiledGrammar, GrammarMatcher, compile_grammar
from runtime.constrained.grammar import BaseGrammar, BaseGrammarMatcher
from runtime.constrained.jump_forward import JumpForward, jump_forward
from runtime.constrained.vocabulary import TokenVocabulary, token_vocabulary

__all__ = [
    "BaseGrammar",
    "BaseGrammarMatcher",
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "JumpForward",
    "TokenVocabulary",
    "allocate_token_bitmask",
    "apply_token_bitmask_",
    "compile_grammar",
    "jump_forward",
    "token_vocabulary",
]


def __getattr__(name: str):
    if name in ("allocate_token_bitmask", "apply_token_bitmask_"):
        from runtime.constrained import bitmask

        return getattr(bitmask, name)
    raise AttributeError(f"module 'runtime.constrained' has no attribute {name!r}")
