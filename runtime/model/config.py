"""`ModelConfig`: an HF `config.json` normalised once, at the boundary, into the fields the runtime uses.

HF configs spell the same thing several ways (`torch_dtype` / `dtype`, `rope_theta` + `rope_scaling` /
transformers 5's `rope_parameters`, `type` / `rope_type`, an int or a list of EOS ids) and some
architectures hard-code what others read from the config (Qwen2's q/k/v biases). Everything past this
file reads only `ModelConfig`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _llama_rules(raw: dict) -> dict:
    bias = bool(raw.get("attention_bias", False))
    if raw.get("mlp_bias", False):
        raise ValueError("mlp_bias=true is not supported (no released Llama checkpoint uses it)")
    return {"attention_bias": bias, "attention_output_bias": bias, "qk_norm": False, "sliding_window": None}


def _mistral_rules(raw: dict) -> dict:
    # HF's Mistral has no projection biases, whatever the config says.
    window = raw.get("sliding_window")
    return {"attention_bias": False, "attention_output_bias": False, "qk_norm": False, "sliding_window": window}


def _qwen_window(raw: dict) -> Optional[int]:
    # Qwen configs carry a sliding_window value even when it is switched off.
    return raw.get("sliding_window") if raw.get("use_sliding_window", False) else None


def _qwen2_rules(raw: dict) -> dict:
    # HF's Qwen2 always has q/k/v biases and never an o_proj bias.
    window = _qwen_window(raw)
    return {"attention_bias": True, "attention_output_bias": False, "qk_norm": False, "sliding_window": window}


def _qwen3_rules(raw: dict) -> dict:
    bias = bool(raw.get("attention_bias", False))
    return {"attention_bias": bias, "attention_output_bias": bias, "qk_norm": True, "sliding_window": _qwen_window(raw)}


# architectures[0] → how that architecture's config fills the arch-specific fields.
_ARCH_RULES: dict[str, Callable[[dict], dict]] = {
    "LlamaForCausalLM": _llama_rules,
    "MistralForCausalLM": _mistral_rules,
    "Qwen2ForCausalLM": _qwen2_rules,
    "Qwen3ForCausalLM": _qwen3_rules,
}
SUPPORTED_ARCHITECTURES = tuple(_ARCH_RULES)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Optional[dict]  # None for plain RoPE, else always has "rope_type"
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # biases on q/k/v projections
    attention_output_bias: bool  # bias on o_proj
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    hidden_act: str
    torch_dtype: Optional[str]  # e.g. "bfloat16"; None when the checkpoint does not say
    eos_token_ids: tuple[int, ...]
    bos_token_id: Optional[int]
    sliding_window: Optional[int]
    weight_quantization: Optional[str] = None  # "fp8": the checkpoint stores e4m3 weights with scales
    weight_block_size: Optional[tuple[int, int]] = None  # fp8 scales per (rows, columns) block, if so

    @property
    def has_fp8_layers(self) -> bool:
        """The checkpoint's e4m3 weights are served as fp8 layers (per-tensor or per-channel scales);
        block-scaled ones are dequantised at load instead."""
        return self.weight_quantization == "fp8" and self.weight_block_size is None

    @property
    def context_length(self) -> int:
        """Longest sequence served: full attention only, so a sliding window caps the context."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_pretrained(cls, model_path: str) -> "ModelConfig":
        """Read `config.json` (and `generation_config.json` when present) from a local directory."""
        if not os.path.isdir(model_path):
            raise FileNotFoundError(f"model directory not found: {model_path}")
        config_file = os.path.join(model_path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"no config.json in model directory: {config_file}")
        with open(config_file, encoding="utf-8") as f:
            raw = json.load(f)
        generation = None
        generation_file = os.path.join(model_path, "generation_config.json")
        if os.path.isfile(generation_file):
            with open(generation_file, encoding="utf-8") as f:
                generation = json.load(f)
        return cls.from_dict(raw, generation)

    @classmethod
    def from_dict(cls, raw: dict, generation_config: Optional[dict] = None) -> "ModelConfig":
        """Normalise a parsed config.json (+ optional generation_config.json). Raises ValueError for
        anything the runtime cannot run faithfully."""
        architecture = _architecture(raw)
        missing = [key for key in _REQUIRED_KEYS if key not in raw]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        weight_quantization, weight_block_size = _weight_quantization(raw.get("quantization_config"))
        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ValueError(f"hidden_act {hidden_act!r} is not supported; only 'silu'")
        num_heads = int(raw["num_attention_heads"])
        hidden_size = int(raw["hidden_size"])
        rope_theta, rope_scaling = _rope(raw)
        return cls(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            hidden_act=hidden_act,
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            eos_token_ids=_eos_ids(raw, generation_config),
            bos_token_id=raw.get("bos_token_id"),
            weight_quantization=weight_quantization,
            weight_block_size=weight_block_size,
            **_ARCH_RULES[architecture](raw),
        )


# quant_method values whose checkpoints hold e4m3 weights, each with float32 scales to multiply by: per
# tensor or per output channel (served in fp8, runtime/model/fp8.py), or per block (weight_block_size,
# `weight_scale_inv`: DeepSeek-V3's and Qwen3-FP8's format), dequantised to the model dtype at load
FP8_CHECKPOINT_METHODS = ("fp8", "compressed-tensors", "fbgemm_fp8")


def _weight_quantization(config: Any) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    """config.json's quantization_config → ("fp8", block size or None) for the fp8 formats we load,
    (None, None) when absent; ValueError naming the method or scheme otherwise."""
    if not config:
        return None, None
    method = config.get("quant_method", "unknown") if isinstance(config, dict) else "unknown"
    hint = ("fp8 checkpoints (quant_method " + ", ".join(map(repr, FP8_CHECKPOINT_METHODS)) + ") load, and a "
            "bf16 checkpoint runs in fp8 with quantization='fp8'")
    if method not in FP8_CHECKPOINT_METHODS:
        raise ValueError(f"the checkpoint's quantization_config quant_method {method!r} is not supported: {hint}")
    block = config.get("weight_block_size")
    if block is not None:
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise ValueError(f"quantization_config weight_block_size must be two positive ints, got {block!r}")
        return "fp8", (block[0], block[1])
    for name, group in (config.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        scheme = (weights.get("type"), weights.get("num_bits"), weights.get("strategy"))
        if scheme[:2] != ("float", 8) or scheme[2] not in ("tensor", "channel"):
            raise ValueError(f"quantization_config config_groups.{name}.weights (type, num_bits, strategy) = "
                             f"{scheme} is not supported: only ('float', 8, 'tensor' or 'channel')")
    return "fp8", None


def _architecture(raw: dict) -> str:
    archs = raw.get("architectures") or []
    if not archs or archs[0] not in _ARCH_RULES:
        found = archs[0] if archs else "none given"
        raise ValueError(
            f"unsupported model architecture ({found}); supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return archs[0]


def _rope(raw: dict) -> tuple[float, Optional[dict]]:
    """(rope_theta, rope_scaling) from either spelling: transformers 5's `rope_parameters` holds the
    theta and the scaling together; older configs have `rope_theta` and a `rope_scaling` dict whose
    type key is `type` or `rope_type`."""
    params: dict[str, Any] = dict(raw.get("rope_parameters") or {})
    params.update(raw.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    required = ("factor",) if rope_type == "linear" else _LLAMA3_ROPE_KEYS
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"rope type {rope_type!r} needs {', '.join(missing)} in the config's rope parameters")
    return theta, {"rope_type": rope_type, **params}


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _eos_ids(raw: dict, generation_config: Optional[dict]) -> tuple[int, ...]:
    ids = _as_ids(raw.get("eos_token_id"))
    if generation_config:
        ids += _as_ids(generation_config.get("eos_token_id"))
    return tuple(dict.fromkeys(ids))  # dedup, keep order
