"""Tiny random Llama-family checkpoints built on the fly: for tests, benchmarks and the demo until a
trained embedded model ships. Nothing is downloaded: the tokenizer is trained here, in-process.

    path = build_tiny_model("/tmp/m", arch="qwen3", seed=0)
    Engine(model_path=path)
"""

from __future__ import annotations

import json
import os
from typing import Optional

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]

# A ChatML-style template; the engine reads it from tokenizer_config.json like any HF checkpoint.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an one two three cat dog bird sun moon sky tree river city house book road car red blue "
    "green small big old new happy quick slow runs walks sees finds likes makes is are was were has "
    "have and or but if then when where what who why how yes no name age city country answer "
    "question true false null list item first second third paris london tokyo rome berlin madrid "
    "water fire earth air light dark day night time year people world life hand part child eye "
    "woman man place work week case point number group problem fact hello thanks please"
).split()


def training_corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    """Lines of simple English, numbers, JSON and non-ASCII text (so multi-byte UTF-8 characters end
    up split across byte-level tokens, which streaming must handle)."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        words = rng.choices(_WORDS, k=rng.randint(3, 12))
        kind = i % 5
        if kind == 0:
            lines.append(" ".join(words).capitalize() + ".")
        elif kind == 1:
            lines.append(f"Q: What is {words[0]}? A: {words[1]} {rng.randint(0, 999)}.")
        elif kind == 2:
            lines.append(json.dumps({"name": words[0], "age": rng.randint(1, 99), "ok": rng.random() < 0.5}))
        elif kind == 3:
            lines.append(f"{rng.randint(1, 9)}. {words[0]}, {words[1]}, {words[2]}")
        else:
            lines.append(rng.choice(["café", "naïve", "日本語", "Ω≈ç√", "emoji 🙂 ok", "Zürich"]) + " " + words[0])
    return lines


def build_tokenizer(out_dir: str, vocab_size: int = 384, seed: int = 0) -> None:
    """Train a byte-level BPE tokenizer and save it in HF format (tokenizer.json + config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


ARCH_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            "rope_theta": 500000.0,
        },
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
}


def build_tiny_model(
    out_dir: str,
    arch: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    vocab_size: int = 384,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    init_std: Optional[float] = None,
) -> str:
    """Save a random `arch` model + trained tokenizer in `out_dir`; returns out_dir."""
    import torch
    import transformers

    if arch not in ARCH_CONFIGS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {sorted(ARCH_CONFIGS)}")
    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer(out_dir, vocab_size=vocab_size, seed=seed)
    config_cls, model_cls, extra = ARCH_CONFIGS[arch]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out_dir)
    config = getattr(transformers, config_cls)(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=init_std if init_std is not None else 0.2,
        torch_dtype="float32",
        **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    if arch == "qwen2":
        # HF initialises biases to zero; make them matter so a missing bias is caught.
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.2)
    if arch == "qwen3":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.normal_(1.0, 0.2)
                layer.self_attn.k_norm.weight.normal_(1.0, 0.2)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
