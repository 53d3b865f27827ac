"""Our Llama-family model against HF transformers on the same tiny checkpoints, through the paged KV
pool: prefill, chunked prefill, decode, mixed-length batches; plus strict loading, dummy weights, bf16.

The reference is HF's full-sequence forward in float32; every logit of ours must be within 1e-4.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime.model.loader import load_model
from runtime.model.tiny import build_tiny_model
from tests.integration._batches import BatchBuilder, forward_logits

ATOL = 1e-4
PREFILL_LEN = 25  # then decode one token at a time to the end of the sequence

# name → (build_tiny_model kwargs, sequence length). llama3's scaling uses
# original_max_position_embeddings=64, so its sequence runs past position 64.
CASES = {
    "llama": (dict(arch="llama"), 40),
    "llama3": (dict(arch="llama3", max_position_embeddings=512), 90),
    "mistral": (dict(arch="mistral"), 40),
    "qwen2": (dict(arch="qwen2"), 40),
    "qwen3": (dict(arch="qwen3"), 40),
    "tied": (dict(arch="llama", tie_word_embeddings=True), 40),
}


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """name → path of that CASES model, built once per module."""
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = build_tiny_model(str(tmp_path_factory.mktemp(name)), seed=1, **CASES[name][0])
        return built[name]

    return get


def hf_logits(path: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids[None]).logits[0].float()  # [T, vocab]


def random_ids(n: int, vocab_size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tiny_path):
    """(our model, its config, two token sequences of different lengths, HF logits for each)."""
    path = tiny_path(request.param)
    model, config = load_model(path, attn_backend="torch_native")
    seq_len = CASES[request.param][1]
    ids_a = random_ids(seq_len, config.vocab_size, seed=2)
    ids_b = random_ids(seq_len - 9, config.vocab_size, seed=3)
    return model, config, ids_a, ids_b, hf_logits(path, ids_a), hf_logits(path, ids_b)


def assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    diff = (ours - reference).abs().max().item()
    assert diff < ATOL, f"max |ours - hf| = {diff:.2e}"


def test_prefill_logits_match_hf(case):
    model, config, ids, _, reference, _ = case
    builder = BatchBuilder(config)
    row = builder.add_request()
    assert_close(forward_logits(model, builder.extend({row: ids.tolist()})), reference)


def test_prefill_then_token_by_token_decode_matches_hf(case):
    model, config, ids, _, reference, _ = case
    builder = BatchBuilder(config)
    row = builder.add_request()
    logits = forward_logits(model, builder.extend({row: ids[:PREFILL_LEN].tolist()}))
    assert_close(logits, reference[:PREFILL_LEN])
    for pos in range(PREFILL_LEN, len(ids)):
        logits = forward_logits(model, builder.decode({row: ids[pos]}))
        assert_close(logits, reference[pos : pos + 1])


def test_extend_after_a_cached_prefix_matches_hf(case):
    # A chunked prefill: the second extend attends to the 25 tokens already in the pool.
    model, config, ids, _, reference, _ = case
    builder = BatchBuilder(config)
    row = builder.add_request()
    forward_logits(model, builder.extend({row: ids[:PREFILL_LEN].tolist()}))
    logits = forward_logits(model, builder.extend({row: ids[PREFILL_LEN:].tolist()}))
    assert_close(logits, reference[PREFILL_LEN:])


def test_two_sequences_of_different_lengths_share_extend_and_decode_batches(case):
    model, config, ids_a, ids_b, reference_a, reference_b = case
    builder = BatchBuilder(config)
    a, b = builder.add_request(), builder.add_request()
    len_a, len_b = PREFILL_LEN + 5, PREFILL_LEN - 7
    logits = forward_logits(model, builder.extend({a: ids_a[:len_a].tolist(), b: ids_b[:len_b].tolist()}))
    assert_close(logits[:len_a], reference_a[:len_a])
    assert_close(logits[len_a:], reference_b[:len_b])
    for step in range(6):
        logits = forward_logits(model, builder.decode({a: ids_a[len_a + step], b: ids_b[len_b + step]}))
        assert_close(logits[0:1], reference_a[len_a + step : len_a + step + 1])
        assert_close(logits[1:2], reference_b[len_b + step : len_b + step + 1])


def test_tied_model_reuses_the_embedding_as_lm_head(tiny_path):
    model, config = load_model(tiny_path("tied"))
    assert config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in dict(model.named_parameters())


# --- strict loading


def copy_with_tensors(source: str, destination: str, edit) -> str:
    """Copy a checkpoint directory, passing its tensors dict through `edit` before saving."""
    shutil.copytree(source, destination)
    file = os.path.join(destination, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})
    return destination


def test_extra_checkpoint_tensor_is_an_error_naming_it(tiny_path, tmp_path):
    extra = "model.layers.0.mlp.extra_proj.weight"
    path = copy_with_tensors(tiny_path("llama"), tmp_path / "m", lambda t: t.update({extra: torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"1 unexpected checkpoint tensor\(s\): model\.layers\.0\.mlp\.extra_proj"):
        load_model(str(path))


def test_missing_checkpoint_tensor_is_an_error_naming_it(tiny_path, tmp_path):
    path = copy_with_tensors(tiny_path("llama"), tmp_path / "m", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"1 parameter\(s\) missing .*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(path))


def test_untied_checkpoint_without_lm_head_is_an_error(tiny_path, tmp_path):
    path = copy_with_tensors(tiny_path("llama"), tmp_path / "m", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"lm_head\.weight \(tie_word_embeddings is false"):
        load_model(str(path))


def test_wrong_tensor_shape_is_an_error_naming_it(tiny_path, tmp_path):
    name = "model.layers.0.self_attn.k_proj.weight"
    path = copy_with_tensors(tiny_path("llama"), tmp_path / "m", lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(ValueError, match=r"k_proj\.weight has shape \(31, 64\), the model expects \(32, 64\)"):
        load_model(str(path))


def test_rotary_buffers_and_tied_lm_head_in_checkpoint_are_ignored(tiny_path, tmp_path):
    def add_harmless(tensors):
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()

    path = copy_with_tensors(tiny_path("tied"), tmp_path / "m", add_harmless)
    model, _ = load_model(str(path))
    reference, _ = load_model(tiny_path("tied"))
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)


def test_sharded_checkpoint_loads_the_same_weights(tiny_path, tmp_path):
    source = tiny_path("qwen2")
    destination = tmp_path / "sharded"
    shutil.copytree(source, destination)
    os.remove(destination / "model.safetensors")
    tensors = load_file(os.path.join(source, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(destination / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in shard_names})
    (destination / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sharded, _ = load_model(str(destination))
    single, _ = load_model(source)
    single_params = dict(single.named_parameters())
    for name, param in sharded.named_parameters():
        assert torch.equal(param, single_params[name]), name


def test_missing_directory_or_config_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_unknown_dtype_or_load_format_is_rejected(tiny_path):
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_path("llama"), dtype="int8")
    with pytest.raises(ValueError, match="load_format"):
        load_model(tiny_path("llama"), load_format="pickle")


# --- dummy weights and dtypes


def test_dummy_load_gives_seeded_random_weights_of_the_right_shapes(tiny_path, tmp_path):
    # No weights needed: only config.json.
    shutil.copytree(tiny_path("qwen3"), tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    model, config = load_model(str(tmp_path / "m"), load_format="dummy", seed=5)
    params = dict(model.named_parameters())
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    assert params["model.layers.0.self_attn.qkv_proj.weight"].shape == (q + 2 * kv, config.hidden_size)
    assert params["model.layers.0.self_attn.qkv_proj.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert params["model.layers.1.mlp.gate_up_proj.weight"].shape == (2 * config.intermediate_size, config.hidden_size)
    assert params["model.layers.1.mlp.down_proj.weight"].shape == (config.hidden_size, config.intermediate_size)
    assert params["model.embed_tokens.weight"].shape == (config.vocab_size, config.hidden_size)
    assert params["lm_head.weight"].shape == (config.vocab_size, config.hidden_size)
    assert params["model.layers.0.self_attn.q_norm.weight"].shape == (config.head_dim,)
    assert torch.all(params["model.norm.weight"] == 1.0)
    again, _ = load_model(str(tmp_path / "m"), load_format="dummy", seed=5)
    other, _ = load_model(str(tmp_path / "m"), load_format="dummy", seed=6)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)
    builder = BatchBuilder(config)
    logits = forward_logits(model, builder.extend({builder.add_request(): list(range(20))}))
    assert logits.shape == (20, config.vocab_size) and torch.isfinite(logits).all()


def test_bfloat16_load_runs_close_to_float32(tiny_path):
    path = tiny_path("llama")
    model, config = load_model(path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ids = random_ids(30, config.vocab_size, seed=4)
    builder = BatchBuilder(config, dtype=torch.bfloat16)
    logits = forward_logits(model, builder.extend({builder.add_request(): ids.tolist()}))
    reference = hf_logits(path, ids)
    assert logits.dtype == torch.float32
    # bf16 keeps ~3 significant digits; compare against the logit scale, and the top token.
    scale = reference.abs().max().item()
    assert (logits - reference).abs().max().item() < 0.05 * scale
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean().item() > 0.9


def test_linear_and_llama3_inverse_frequencies_match_hf():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from runtime.model.rotary import rope_inv_freq

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}  # fmt: skip
    for scaling in (llama3, {"rope_type": "linear", "factor": 4.0}):
        hf_config = LlamaConfig(
            hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
            rope_parameters={"rope_theta": 500000.0, **scaling},
        )  # fmt: skip
        expected, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_config)
        torch.testing.assert_close(rope_inv_freq(128, 500000.0, scaling), expected, rtol=1e-6, atol=0)
