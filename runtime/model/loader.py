"""`load_model`: a local HF checkpoint directory → our model, on its device, in its dtype.

The model is built on the meta device (no memory), its storage is then allocated once on the target
device in the target dtype, and every parameter is filled: from *.safetensors, streamed tensor by
tensor, or with seeded random values (`load_format="dummy"`, for benchmarks at real shapes without
real weights).

Loading is strict: the checkpoint's tensor names are checked against the model's before any data is
read; a tensor with no home or a parameter with no tensor is an error naming them.

fp8 checkpoints (config.json's quantization_config, see config.py): every Linear whose checkpoint
weight is e4m3 becomes an fp8 layer (fp8.py) while the model is still on the meta device, so loading
never holds more than the fp8 model's memory; its `weight_scale` is read too, one value per tensor
(spread over the tensor's rows) or one per output channel. With block scales (`weight_block_size`)
the weights are dequantised to the model dtype instead, as they are read. Static activation scales
(`input_scale`) are not used: inputs are always scaled per token.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from typing import Iterator, Optional, Union

import torch
from torch import nn

from runtime.attention.base import BaseAttentionBackend, create_attention_backend
from runtime.model.config import ModelConfig
from runtime.model.layers import Linear, MergedLinear, RMSNorm
from runtime.model.registry import get_model_class
from runtime.model.rotary import RotaryEmbedding

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOAD_FORMATS = ("auto", "safetensors", "dummy")
DUMMY_STD = 0.02

# Checkpoint tensors that carry no weights: RoPE tables some exporters saved as buffers.
_HARMLESS_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
# ... and in fp8 checkpoints, static scales for activations and the KV cache, which we do not use.
_UNUSED_FP8_SCALES = ("input_scale", "k_scale", "v_scale")
_SAFETENSORS_FP8 = "F8_E4M3"
_FP8 = torch.float8_e4m3fn
_BLOCK_SCALE = "weight_scale_inv"  # block-scaled fp8 checkpoints' name for the scales (they multiply)


def load_model(
    model_path: str,
    *,
    dtype: str = "auto",
    device: Union[str, torch.device] = "cpu",
    load_format: str = "auto",
    attn_backend: Union[str, BaseAttentionBackend] = "torch_native",
    seed: int = 0,
) -> tuple[nn.Module, ModelConfig]:
    """Build the registered model for `model_path`'s architecture and fill its weights.

    dtype: "auto" takes the config's torch_dtype (float32 if it has none). attn_backend: a backend
    object or a registered backend name. Returns (model in eval mode without grads, its ModelConfig)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {list(LOAD_FORMATS)}, got {load_format!r}")
    config = ModelConfig.from_pretrained(model_path)
    torch_dtype = resolve_dtype(dtype, config)
    if isinstance(attn_backend, str):
        attn_backend = create_attention_backend(attn_backend)
    model_cls = get_model_class(config.architecture)
    device = torch.device(device)
    with _default_dtype(torch_dtype), torch.device("meta"):
        model = model_cls(config, attn_backend)
    model.requires_grad_(False)
    if load_format != "dummy" and config.has_fp8_layers:
        _make_fp8_layers(model, _fp8_tensor_names(checkpoint_files(model_path)))
    model.to_empty(device=device)  # uninitialised; tied parameters stay one tensor
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):  # derived at construction: built again for real
            module.cos_sin_cache = module.build_cache(device)
    with torch.no_grad():
        if load_format == "dummy":
            fill_dummy_weights(model, seed)
        else:
            load_safetensors(model, model_path, config.weight_quantization, config.weight_block_size)
    return model.eval(), config


def resolve_dtype(dtype: str, config: ModelConfig) -> torch.dtype:
    name = (config.torch_dtype or "float32") if dtype == "auto" else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def fill_dummy_weights(model: nn.Module, seed: int) -> None:
    """Seeded normal(0, DUMMY_STD) in place on the parameters' device; norm scales are 1 so the
    activations keep a realistic size through many layers."""
    generators: dict[torch.device, torch.Generator] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if isinstance(module, RMSNorm):
                param.fill_(1.0)
                continue
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, DUMMY_STD, generator=generators[param.device])


def checkpoint_files(model_path: str) -> list[str]:
    """The *.safetensors files of a checkpoint: those named by model.safetensors.index.json if it
    exists (sharded), else every *.safetensors in the directory."""
    index_file = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.isfile(index_file):
        with open(index_file, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(model_path, name) for name in sorted(set(weight_map.values()))]
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_path}")
    return files


def checkpoint_targets(model: nn.Module) -> dict[str, tuple[torch.Tensor, Optional[slice]]]:
    """Checkpoint tensor name → (our parameter, rows of it, None = all). A MergedLinear answers for
    each of its shards: `…self_attn.q_proj.weight` → rows of `…self_attn.qkv_proj.weight`. An fp8
    layer's scales ([1, N], one per row of its weight) are a target too, as a flat view."""
    targets: dict[str, tuple[torch.Tensor, Optional[slice]]] = {}
    for module_name, module in model.named_modules():  # tied modules appear once
        tensors = list(module.named_parameters(recurse=False))
        if getattr(module, "weight_scale", None) is not None:
            tensors.append(("weight_scale", module.weight_scale.view(-1)))
        for param_name, param in tensors:
            if not isinstance(module, MergedLinear):
                targets[_join(module_name, param_name)] = (param, None)
                continue
            parent = module_name.rpartition(".")[0]
            for shard in module.shard_names:
                start, size = module.shard_range(shard)
                targets[_join(_join(parent, shard), param_name)] = (param, slice(start, start + size))
    return targets


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def load_safetensors(model: nn.Module, model_path: str, weight_quantization: Optional[str] = None,
                     weight_block_size: Optional[tuple[int, int]] = None) -> None:
    """Fill every parameter from the checkpoint; ValueError (before reading any data) if names differ.
    weight_quantization "fp8" (the config's): the layers stored in e4m3 become fp8 layers first, or,
    with a weight_block_size, their weights are dequantised to the model dtype as they are read."""
    from safetensors import safe_open

    files = checkpoint_files(model_path)
    names_by_file = {}
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            names_by_file[path] = list(f.keys())
    fp8_names = _fp8_tensor_names(files)
    if fp8_names and weight_quantization != "fp8":
        raise ValueError(f"checkpoint tensor {min(fp8_names)} is fp8 (e4m3), but config.json has no fp8 "
                         "quantization_config to say how to scale it")
    harmless, block_scales = _HARMLESS_SUFFIXES, None
    if weight_quantization == "fp8":
        if not fp8_names:
            logger.warning("config.json's quantization_config is fp8 but no checkpoint tensor is: loading the "
                           "weights as stored (quantization='fp8' rounds them after loading)")
        harmless = _HARMLESS_SUFFIXES + _UNUSED_FP8_SCALES
        if weight_block_size is None:
            _make_fp8_layers(model, fp8_names)
        else:
            block_scales = _read_block_scales(files, fp8_names)
            harmless += (_BLOCK_SCALE,)
        if any(n.endswith("input_scale") for names in names_by_file.values() for n in names):
            logger.info("the checkpoint's static input scales are not used: inputs are scaled per token")
    targets = checkpoint_targets(model)
    if block_scales is None:  # without block scales, only an fp8 layer's weight has a scale to be read with
        unscaled = sorted(n for n in fp8_names if n in targets and targets[n][0].dtype != _FP8)
        if unscaled:
            raise ValueError(f"checkpoint tensor(s) stored in fp8 but not the weight of a linear layer, so without a "
                             f"scale: {_first_few(unscaled)}")
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    _check_names(model_path, targets, [n for names in names_by_file.values() for n in names], tied, harmless)
    for path, names in names_by_file.items():
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in names:
                if name not in targets:
                    continue
                tensor = f.get_tensor(name)
                if block_scales is not None and name in fp8_names:
                    from runtime.model.fp8 import dequantize_blocks

                    try:
                        tensor = dequantize_blocks(tensor, block_scales[name], weight_block_size)
                    except ValueError as error:
                        raise ValueError(f"checkpoint tensor {name}: {error}") from None
                _copy_tensor(name, tensor, *targets[name])


def _fp8_tensor_names(files: list[str]) -> set[str]:
    """The checkpoint tensors stored in e4m3 (from the files' headers: no data is read)."""
    from safetensors import safe_open

    names = set()
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            names.update(n for n in f.keys() if f.get_slice(n).get_dtype() == _SAFETENSORS_FP8)
    return names


def _read_block_scales(files: list[str], fp8_names: set[str]) -> dict[str, torch.Tensor]:
    """Each e4m3 weight's block scales (`<layer>.weight_scale_inv`, small), wherever they are stored."""
    from safetensors import safe_open

    scales = {}
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                if name.endswith(_BLOCK_SCALE):
                    scales[name[: -len(_BLOCK_SCALE)] + "weight"] = f.get_tensor(name)
    missing = sorted(fp8_names - set(scales))
    if missing:
        raise ValueError(f"{len(missing)} fp8 weight(s) have no {_BLOCK_SCALE} in the checkpoint: {_first_few(missing)}")
    return scales


def _make_fp8_layers(model: nn.Module, fp8_names: set[str]) -> None:
    """Every Linear whose checkpoint weight (each shard's, for a merged layer) is e4m3 → an fp8 layer
    (those already made fp8, by load_model on the meta device, stay as they are)."""
    from runtime.model.fp8 import make_fp8

    for module_name, module in model.named_modules():
        if not isinstance(module, Linear) or module.weight_scale is not None:
            continue
        parent = module_name.rpartition(".")[0]
        shards = module.shard_names if isinstance(module, MergedLinear) else [module_name.rpartition(".")[2]]
        stored = [_join(_join(parent, shard), "weight") for shard in shards]
        in_fp8 = [name in fp8_names for name in stored]
        if all(in_fp8):
            if module.output_size % 16 or module.input_size % 16:  # what torch._scaled_mm takes
                raise ValueError(f"checkpoint tensor(s) {', '.join(stored)} are fp8, but fp8 matmuls need sizes "
                                 f"that are multiples of 16, not {module.output_size} x {module.input_size}")
            make_fp8(module)
        elif any(in_fp8):
            raise ValueError(f"checkpoint tensors {', '.join(stored)} run as one matmul but are not all fp8 "
                             f"(fp8: {[n for n, f in zip(stored, in_fp8) if f]})")


def _check_names(model_path: str, targets: dict, names: list[str], tied: bool,
                 harmless_suffixes: tuple[str, ...] = _HARMLESS_SUFFIXES) -> None:
    harmless = harmless_suffixes + (("lm_head.weight",) if tied else ())
    unexpected = [n for n in names if n not in targets and not n.endswith(harmless)]
    missing = sorted(set(targets) - set(names))
    if not unexpected and not missing:
        return
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected checkpoint tensor(s): {_first_few(unexpected)}")
    if missing:
        hint = ""
        if "lm_head.weight" in missing:
            hint = " (tie_word_embeddings is false, so the checkpoint must hold lm_head.weight)"
        problems.append(f"{len(missing)} parameter(s) missing from the checkpoint: {_first_few(missing)}{hint}")
    raise ValueError(f"checkpoint {model_path} does not match the model: " + "; ".join(problems))


def _first_few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit} more)" if len(names) > limit else "")


def _copy_tensor(name: str, tensor: torch.Tensor, param: torch.Tensor, rows: Optional[slice]) -> None:
    destination = param.data if rows is None else param.data[rows]
    if name.endswith("weight_scale"):
        # one scale for the whole tensor: each of its rows takes it; one per output channel: [N] or [N, 1]
        tensor = tensor.reshape(1).expand(destination.shape) if tensor.numel() == 1 else tensor.reshape(-1)
    if destination.shape != tensor.shape:
        raise ValueError(
            f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(destination.shape)}"
        )
    destination.copy_(tensor)  # casts to the parameter's dtype and moves to its device
