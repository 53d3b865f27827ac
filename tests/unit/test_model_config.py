"""ModelConfig: every supported architecture's config.json, in both the old and the transformers-5
spellings, normalises to the same fields; what we cannot run faithfully is refused by name."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runtime.model.config import SUPPORTED_ARCHITECTURES, ModelConfig
from runtime.model.registry import get_model_class, supported_architectures


def llama31_8b() -> dict:
    """Shaped like meta-llama/Llama-3.1-8B-Instruct's config.json (old spelling)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 128256,
    }


def small(arch: str, **overrides) -> dict:
    raw = {
        "architectures": [arch],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 384,
        "max_position_embeddings": 512,
    }
    raw.update(overrides)
    return raw


def test_llama31_config_normalises_every_field():
    config = ModelConfig.from_dict(llama31_8b())
    assert (config.architecture, config.vocab_size, config.hidden_size) == ("LlamaForCausalLM", 128256, 4096)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (32, 32, 8, 128)
    assert config.intermediate_size == 14336 and config.rms_norm_eps == 1e-5
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert config.context_length == config.max_position_embeddings == 131072
    assert config.eos_token_ids == (128001, 128008, 128009) and config.bos_token_id == 128000
    assert config.torch_dtype == "bfloat16" and config.hidden_act == "silu"
    assert not (config.attention_bias or config.attention_output_bias or config.qk_norm or config.tie_word_embeddings)
    assert config.sliding_window is None


def test_transformers5_rope_parameters_spelling_gives_the_same_config():
    old = llama31_8b()
    new = dict(old)
    new["rope_parameters"] = {"rope_theta": new.pop("rope_theta"), **new.pop("rope_scaling")}
    new["dtype"] = new.pop("torch_dtype")
    assert ModelConfig.from_dict(new) == ModelConfig.from_dict(old)


def test_default_rope_in_either_spelling_has_no_scaling():
    plain = ModelConfig.from_dict(small("LlamaForCausalLM", rope_theta=1e6))
    v5 = ModelConfig.from_dict(small("LlamaForCausalLM", rope_parameters={"rope_theta": 1e6, "rope_type": "default"}))
    assert plain.rope_scaling is None and v5.rope_scaling is None
    assert plain.rope_theta == v5.rope_theta == 1e6
    assert ModelConfig.from_dict(small("LlamaForCausalLM")).rope_theta == 10000.0


def test_old_style_linear_scaling_with_type_key():
    config = ModelConfig.from_dict(small("LlamaForCausalLM", rope_scaling={"type": "linear", "factor": 2.0}))
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_unknown_rope_type_is_refused_by_name():
    raw = small("LlamaForCausalLM", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="'yarn'"):
        ModelConfig.from_dict(raw)


def test_llama3_rope_without_its_parameters_is_refused():
    raw = small("LlamaForCausalLM", rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ValueError, match="low_freq_factor"):
        ModelConfig.from_dict(raw)


def test_head_dim_and_kv_heads_defaults():
    config = ModelConfig.from_dict(small("LlamaForCausalLM"))
    assert config.head_dim == 16 and config.num_kv_heads == 4


def test_llama_attention_bias_applies_to_all_projections():
    config = ModelConfig.from_dict(small("LlamaForCausalLM", attention_bias=True))
    assert config.attention_bias and config.attention_output_bias


def test_qwen2_has_qkv_bias_and_ignores_a_disabled_sliding_window():
    # Qwen2.5 configs carry sliding_window even though use_sliding_window is false.
    raw = small("Qwen2ForCausalLM", sliding_window=131072, use_sliding_window=False, max_position_embeddings=32768)
    config = ModelConfig.from_dict(raw)
    assert config.attention_bias and not config.attention_output_bias and not config.qk_norm
    assert config.sliding_window is None and config.context_length == 32768


def test_qwen3_has_qk_norm_and_an_explicit_head_dim():
    # Qwen3-0.6B: hidden 1024, 16 heads, but head_dim 128 (not 64).
    raw = small("Qwen3ForCausalLM", hidden_size=1024, num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    config = ModelConfig.from_dict(raw)
    assert config.qk_norm and config.head_dim == 128 and config.num_kv_heads == 8
    assert not config.attention_bias


def test_mistral_sliding_window_caps_the_context_length():
    config = ModelConfig.from_dict(small("MistralForCausalLM", sliding_window=4096, max_position_embeddings=32768))
    assert config.sliding_window == 4096 and config.context_length == 4096
    no_window = ModelConfig.from_dict(small("MistralForCausalLM", sliding_window=None, max_position_embeddings=32768))
    assert no_window.context_length == 32768


def test_unsupported_architecture_error_lists_the_supported_ones():
    with pytest.raises(ValueError) as excinfo:
        ModelConfig.from_dict(small("GPT2LMHeadModel"))
    message = str(excinfo.value)
    assert "GPT2LMHeadModel" in message
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in message


def test_non_silu_activation_is_refused():
    with pytest.raises(ValueError, match="gelu"):
        ModelConfig.from_dict(small("LlamaForCausalLM", hidden_act="gelu"))


FP8_GROUP = {"weights": {"type": "float", "num_bits": 8, "strategy": "channel"}, "input_activations": {"dynamic": True}}


@pytest.mark.parametrize("quantization_config", [
    {"quant_method": "fp8", "activation_scheme": "static"},
    {"quant_method": "fbgemm_fp8"},
    {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": FP8_GROUP}},
])
def test_fp8_checkpoints_are_recognised(quantization_config):
    config = ModelConfig.from_dict(small("LlamaForCausalLM", quantization_config=quantization_config))
    assert config.weight_quantization == "fp8" and config.weight_block_size is None and config.has_fp8_layers
    assert ModelConfig.from_dict(small("LlamaForCausalLM")).weight_quantization is None


def test_block_scaled_fp8_checkpoints_keep_their_block_size():
    qwen3_fp8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}
    config = ModelConfig.from_dict(small("Qwen3ForCausalLM", quantization_config=qwen3_fp8))
    assert (config.weight_quantization, config.weight_block_size) == ("fp8", (128, 128))
    assert not config.has_fp8_layers  # dequantised at load


@pytest.mark.parametrize("quantization_config, message", [
    ({"quant_method": "awq", "bits": 4}, "quant_method 'awq' is not supported.*quantization='fp8'"),
    ({"quant_method": "gptq"}, "quant_method 'gptq' is not supported"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, r"weight_block_size must be two positive ints, got \[128\]"),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"type": "int", "num_bits": 4}}}},
     r"config_groups.group_0.weights .* \('int', 4, None\) is not supported"),
    ({"quant_method": "compressed-tensors",
      "config_groups": {"g": {"weights": {"type": "float", "num_bits": 8, "strategy": "block"}}}}, "'block'"),
])
def test_other_quantised_checkpoints_are_refused_naming_what_is_not_supported(quantization_config, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(small("LlamaForCausalLM", quantization_config=quantization_config))


def test_eos_ids_merge_config_and_generation_config_in_order_without_duplicates():
    config = ModelConfig.from_dict(small("LlamaForCausalLM", eos_token_id=2), {"eos_token_id": [7, 2, 9]})
    assert config.eos_token_ids == (2, 7, 9)
    assert ModelConfig.from_dict(small("LlamaForCausalLM")).eos_token_ids == ()


def test_from_pretrained_reads_config_and_generation_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(small("Qwen3ForCausalLM", eos_token_id=5)))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6]}))
    config = ModelConfig.from_pretrained(str(tmp_path))
    assert config.architecture == "Qwen3ForCausalLM" and config.eos_token_ids == (5, 6)


def test_from_pretrained_missing_directory_or_config_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        ModelConfig.from_pretrained(str(tmp_path / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_pretrained(str(tmp_path))


def test_config_is_frozen():
    config = ModelConfig.from_dict(small("LlamaForCausalLM"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_layers = 3


def test_every_normalised_architecture_has_a_registered_model():
    assert sorted(SUPPORTED_ARCHITECTURES) == supported_architectures()
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        get_model_class("GPT2LMHeadModel")


def test_config_without_a_required_size_is_refused_by_name():
    raw = small("LlamaForCausalLM")
    del raw["intermediate_size"]
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelConfig.from_dict(raw)
