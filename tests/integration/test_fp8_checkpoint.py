"""Checkpoints saved with fp8 (e4m3) weights load and serve on the CPU: per-channel scales give
exactly the layers (and tokens) that quantization="fp8" makes of the bf16 original, per-tensor
scales are spread over their shard's rows of a merged layer, static input scales are ignored, and
malformed checkpoints are refused naming the tensor."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest
import torch

from tests.integration.engine_helpers import checked_engine

FP8 = torch.float8_e4m3fn
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [[5, 9, 14, 3, 77, 21, 8], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
GREEDY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}
CHANNEL_CONFIG = {"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"group_0": {
    "weights": {"type": "float", "num_bits": 8, "strategy": "channel"}, "input_activations": {"dynamic": True}}}}
TENSOR_CONFIG = {"quant_method": "fp8", "activation_scheme": "static"}


def block_quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] → (e4m3, scales [ceil(N/b0), ceil(K/b1)]), one scale per tile, tile by tile."""
    from runtime.model.fp8 import FP8_MAX

    rows, cols = weight.shape
    scales = torch.empty(-(-rows // block[0]), -(-cols // block[1]))
    quantized = torch.empty(rows, cols, dtype=FP8)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            tile = weight[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]].float()
            scales[i, j] = tile.abs().amax() / FP8_MAX
            quantized[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = (tile / scales[i, j]).to(FP8)
    return quantized, scales


def block_dequantize(quantized: torch.Tensor, scales: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    out = quantized.float()
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            out[i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] *= scales[i, j]
    return out


def save_fp8_checkpoint(src: str, dst: str, *, per_tensor: bool, quantization_config, projections=PROJECTIONS,
                        drop_scale_of: str | None = None, block: tuple[int, int] | None = None,
                        cast_to_fp8: tuple[str, ...] = ()) -> str:
    """A copy of the checkpoint at src whose `projections` are stored in e4m3 with their scales: per
    channel ([N, 1], from fp8.quantize_weight), per tensor (a scalar, with a static input scale
    beside it, as AutoFP8 saves them) or per `block` (`weight_scale_inv`, as Qwen3-FP8 is saved).
    Every other tensor is stored in bfloat16."""
    from safetensors.torch import load_file, save_file

    from runtime.model.fp8 import FP8_MAX, quantize_weight

    shutil.copytree(src, dst)
    tensors = {}
    for path in glob.glob(os.path.join(dst, "*.safetensors")):
        tensors.update(load_file(path))
        os.remove(path)
    stored = {}
    for name, tensor in tensors.items():
        tensor = tensor.to(torch.bfloat16)
        prefix, _, leaf = name.rpartition(".")
        if leaf != "weight" or prefix.rpartition(".")[2] not in projections:
            stored[name] = tensor
            continue
        if block:
            stored[name], stored[f"{prefix}.weight_scale_inv"] = block_quantize(tensor, block)
        elif per_tensor:
            scale = tensor.float().abs().amax() / FP8_MAX
            stored[name] = (tensor.float() / scale).to(FP8)
            stored[f"{prefix}.weight_scale"] = scale.reshape(())
            stored[f"{prefix}.input_scale"] = torch.tensor(0.05)
        else:
            stored[name], scale = quantize_weight(tensor)
            stored[f"{prefix}.weight_scale"] = scale.reshape(-1, 1)
    if drop_scale_of:
        del stored[drop_scale_of]
    for name in cast_to_fp8:  # stored in e4m3 with no scale at all
        stored[name] = stored[name].to(FP8)
    save_file(stored, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json")) as f:
        config = json.load(f)
    config["torch_dtype"] = "bfloat16"
    if quantization_config:
        config["quantization_config"] = quantization_config
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


@pytest.fixture(scope="module")
def bf16_model(tiny_model_dir):
    return tiny_model_dir("llama", hidden_size=128, intermediate_size=256)


def _serve(engine):
    outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True)
    return [(o["output_ids"], [lp for lp, _, _ in o["meta_info"]["output_token_logprobs"]]) for o in outs]


@pytest.mark.parametrize("quantization_config", [CHANNEL_CONFIG, {"quant_method": "fbgemm_fp8"}],
                         ids=["compressed-tensors", "fbgemm_fp8"])
def test_per_channel_checkpoint_serves_exactly_what_quantising_the_original_does(bf16_model, tmp_path,
                                                                                  quantization_config):
    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False,
                               quantization_config=quantization_config)
    with checked_engine(model_path=path, dtype="bfloat16") as engine:
        loaded = {name: (m.weight.clone(), m.weight_scale.clone()) for name, m in engine.runner.model.named_modules()
                  if getattr(m, "weight_scale", None) is not None}
        from_checkpoint = _serve(engine)
    with checked_engine(model_path=bf16_model, dtype="bfloat16", quantization="fp8") as engine:
        quantised = {name: (m.weight, m.weight_scale) for name, m in engine.runner.model.named_modules()
                     if getattr(m, "weight_scale", None) is not None}
        assert loaded.keys() == quantised.keys() and len(loaded) == 2 * 4  # qkv, o, gate_up, down per layer
        for name, (weight, scale) in loaded.items():
            assert weight.dtype == FP8 and torch.equal(weight.view(torch.uint8), quantised[name][0].view(torch.uint8)), name
            assert torch.equal(scale, quantised[name][1]), name
        assert _serve(engine) == from_checkpoint


def test_per_tensor_scales_fill_their_shards_rows_and_input_scales_are_unused(bf16_model, tmp_path):
    from safetensors.torch import load_file

    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=True, quantization_config=TENSOR_CONFIG)
    stored = load_file(os.path.join(path, "model.safetensors"))
    with checked_engine(model_path=path, dtype="bfloat16") as engine:
        qkv = engine.runner.model.model.layers[1].self_attn.qkv_proj
        dequantised = qkv.weight.float() * qkv.weight_scale.reshape(-1, 1)
        start = 0
        for shard in ("q_proj", "k_proj", "v_proj"):
            prefix = f"model.layers.1.self_attn.{shard}"
            rows = stored[f"{prefix}.weight"].shape[0]
            assert torch.all(qkv.weight_scale[0, start:start + rows] == stored[f"{prefix}.weight_scale"])
            expected = stored[f"{prefix}.weight"].float() * stored[f"{prefix}.weight_scale"]
            assert torch.equal(dequantised[start:start + rows], expected), shard
            start += rows
        fp8_logprobs = torch.tensor([lp for _, lps in _serve(engine) for lp in lps])
    with checked_engine(model_path=bf16_model, dtype="bfloat16") as engine:
        outs = engine.generate(input_ids=PROMPTS, sampling_params=GREEDY, return_logprob=True)
    # the bf16 model's logprobs of the tokens the fp8 one chose would need forced decoding; their
    # sizes are enough to catch a lost or misapplied scale (tens of percent off, or NaN)
    bf16_logprobs = torch.tensor([lp for o in outs for lp, _, _ in o["meta_info"]["output_token_logprobs"]])
    assert torch.isfinite(fp8_logprobs).all()
    assert abs(fp8_logprobs.mean() - bf16_logprobs.mean()) < 0.25 * abs(bf16_logprobs.mean()) + 0.1


def test_a_merged_layer_stored_half_in_fp8_is_refused(bf16_model, tmp_path):
    from runtime import Engine

    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=CHANNEL_CONFIG,
                               projections=("q_proj", "o_proj"))
    with pytest.raises(ValueError, match=r"q_proj.weight, .*k_proj.weight, .*v_proj.weight run as one matmul but are "
                                         r"not all fp8"):
        Engine(model_path=path, dtype="bfloat16")


def test_fp8_tensors_without_a_quantization_config_are_refused(bf16_model, tmp_path):
    from runtime import Engine

    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=None)
    with pytest.raises(ValueError, match=r"checkpoint tensor model.layers.0.\w+.\w+.weight is fp8 .* no fp8 "
                                         r"quantization_config"):
        Engine(model_path=path, dtype="bfloat16")


def test_a_missing_scale_is_named(bf16_model, tmp_path):
    from runtime import Engine

    name = "model.layers.0.mlp.down_proj.weight_scale"
    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=CHANNEL_CONFIG,
                               drop_scale_of=name)
    with pytest.raises(ValueError, match=f"missing from the checkpoint: {name}"):
        Engine(model_path=path, dtype="bfloat16")


def test_an_fp8_checkpoint_needs_bfloat16(bf16_model, tmp_path):
    from runtime import Engine

    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=CHANNEL_CONFIG)
    with pytest.raises(ValueError, match=r"an fp8 checkpoint \(its quantization_config\) needs dtype bfloat16"):
        Engine(model_path=path, dtype="float32")


BLOCK = (48, 48)  # divides none of the tiny model's sizes (128, 256): partial edge tiles everywhere
BLOCK_CONFIG = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": list(BLOCK)}


def test_block_scaled_checkpoint_is_dequantised_to_bf16_exactly(bf16_model, tmp_path):
    from safetensors.torch import load_file

    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=BLOCK_CONFIG,
                               block=BLOCK)
    stored = load_file(os.path.join(path, "model.safetensors"))
    with checked_engine(model_path=path, dtype="bfloat16") as engine:
        layer = engine.runner.model.model.layers[0]
        assert layer.mlp.down_proj.weight.dtype == torch.bfloat16 and layer.mlp.down_proj.weight_scale is None
        start = 0
        for shard in ("q_proj", "k_proj", "v_proj"):
            prefix = f"model.layers.0.self_attn.{shard}"
            expected = block_dequantize(stored[f"{prefix}.weight"], stored[f"{prefix}.weight_scale_inv"], BLOCK)
            rows = expected.shape[0]
            assert torch.equal(layer.self_attn.qkv_proj.weight[start:start + rows], expected.to(torch.bfloat16)), shard
            start += rows
        prefix = "model.layers.0.mlp.down_proj"
        expected = block_dequantize(stored[f"{prefix}.weight"], stored[f"{prefix}.weight_scale_inv"], BLOCK)
        assert torch.equal(layer.mlp.down_proj.weight, expected.to(torch.bfloat16))
        assert all(len(ids) == GREEDY["max_new_tokens"] for ids, _ in _serve(engine))
    # and rounded again, to per-channel fp8, on request
    with checked_engine(model_path=path, dtype="bfloat16", quantization="fp8") as engine:
        assert engine.runner.model.model.layers[0].mlp.down_proj.weight.dtype == FP8
        assert all(torch.isfinite(torch.tensor(lps)).all() for _, lps in _serve(engine))


def test_block_scales_missing_or_misshapen_are_named(bf16_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from runtime import Engine

    missing = "model.layers.1.mlp.up_proj.weight_scale_inv"
    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "a"), per_tensor=False, quantization_config=BLOCK_CONFIG,
                               block=BLOCK, drop_scale_of=missing)
    with pytest.raises(ValueError, match="fp8 weight.* have no weight_scale_inv in the checkpoint: "
                                         "model.layers.1.mlp.up_proj.weight"):
        Engine(model_path=path, dtype="bfloat16")
    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "b"), per_tensor=False, quantization_config=BLOCK_CONFIG,
                               block=BLOCK)
    tensors = load_file(os.path.join(path, "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight_scale_inv"] = torch.ones(2, 2)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight: block scales of shape \(2, 2\) for a weight of shape \(256, 128\) in "
                                         r"48x48 blocks: expected \(6, 3\)"):
        Engine(model_path=path, dtype="bfloat16")


def test_an_lm_head_stored_in_fp8_is_served_in_fp8(bf16_model, tmp_path):
    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=CHANNEL_CONFIG,
                               projections=PROJECTIONS + ("lm_head",))
    with checked_engine(model_path=path, dtype="bfloat16") as engine:
        lm_head = engine.runner.model.lm_head
        assert lm_head.weight.dtype == FP8 and lm_head.weight_scale.shape == (1, lm_head.output_size)
        assert all(torch.isfinite(torch.tensor(lps)).all() for _, lps in _serve(engine))


def test_an_fp8_tensor_with_no_scale_is_refused(bf16_model, tmp_path):
    from runtime import Engine

    path = save_fp8_checkpoint(bf16_model, str(tmp_path / "fp8"), per_tensor=False, quantization_config=CHANNEL_CONFIG,
                               cast_to_fp8=("model.embed_tokens.weight",))
    with pytest.raises(ValueError, match="stored in fp8 but not the weight of a linear layer, so without a scale: "
                                         "model.embed_tokens.weight"):
        Engine(model_path=path, dtype="bfloat16")
