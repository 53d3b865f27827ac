"""A tiny Llama whose greedy output is a known text: a bigram machine built into real weights.

Every layer's output projections are zeroed, so the hidden state reaching the LM head is the
current token's embedding. Token i of the script gets its own one-hot embedding and the LM head
maps it to token i+1 (the last one to EOS); every other token maps to the first script token. So
from any prompt not ending inside the script, the model writes the script, then EOS — with
`ignore_eos` it writes it again and again. The margin is large (logit 80 vs 0), so even sampling
at temperature 1 follows the script.
"""

from __future__ import annotations

import os
import shutil

SCRIPT_TEXT = "café 日 🙂"  # é and 日 are split across byte-level tokens


def build_scripted_model(src_dir: str, out_dir: str, text: str = SCRIPT_TEXT) -> str:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    script = tokenizer.encode(text)
    eos = tokenizer.eos_token_id
    assert len(set(script)) == len(script) and eos not in script, f"script tokens must be distinct: {script}"
    weights = load_file(os.path.join(src_dir, "model.safetensors"))
    hidden = weights["model.embed_tokens.weight"].shape[1]
    other = len(script)  # the basis direction shared by every token outside the script
    assert other < hidden

    embed = torch.zeros_like(weights["model.embed_tokens.weight"])
    embed[:, other] = 1.0
    head = torch.zeros_like(weights["lm_head.weight"])
    head[script[0], other] = 10.0
    for i, token in enumerate(script):
        embed[token] = 0.0
        embed[token, i] = 1.0
        successor = script[i + 1] if i + 1 < len(script) else eos
        head[successor, i] = 10.0
    weights["model.embed_tokens.weight"] = embed
    weights["lm_head.weight"] = head
    weights["model.norm.weight"] = torch.ones_like(weights["model.norm.weight"])
    for name in weights:
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])

    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(src_dir):
        if name != "model.safetensors":
            shutil.copy(os.path.join(src_dir, name), out_dir)
    save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir
