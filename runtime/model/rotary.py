"""Rotary position embedding (RoPE) with a float32 cos/sin table over every position the model serves.

Convention: HF's non-interleaved `rotate_half` layout: dimension i is paired with i + head_dim/2.
Scaling variants change only the inverse frequencies:
  - "linear": every frequency divided by `factor` (positions interpolated).
  - "llama3" (Llama-3.1): high frequencies kept, low ones divided by `factor`, a smooth blend between.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def rope_inv_freq(head_dim: int, theta: float, rope_scaling: Optional[dict]) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies, on the CPU (so every device gets the same table)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    rope_type = rope_scaling["rope_type"] if rope_scaling else "default"
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, rope_scaling)
    raise ValueError(f"rope type {rope_type!r} is not supported")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Wavelengths longer than the original context / low are stretched by `factor`; shorter than
    # original context / high are left alone; in between, blend linearly in original_len / wavelen.
    scaled = torch.where(wavelen > original_len / low, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= original_len / high) & (wavelen <= original_len / low)
    return torch.where(is_medium, blended, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [T, heads, D] by cos, sin [T, D/2] (float32). Computed in float32, returned in x's dtype.
    On a GPU x is rotated in place by one fused kernel (it is a view of this step's qkv output)."""
    half = x.shape[-1] // 2
    if x.is_cuda and half & (half - 1) == 0 and x.stride(-1) == 1:
        from runtime.model.layers import fused_kernels

        fused = fused_kernels(x)
        if fused is not None:
            return fused.rotary_(x, cos, sin)
    x_float = x.float()
    x1, x2 = x_float[..., :half], x_float[..., half:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [T, 1, D/2], broadcast over heads
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Holds `cos_sin_cache` [max_positions, head_dim] float32 = [cos | sin] per position, built on the
    default device at construction (so a model built under `torch.device("cuda")` gets it there)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, rope_scaling: Optional[dict] = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.theta = theta
        self.rope_scaling = rope_scaling
        # NOTE: non-persistent: derived, never in a checkpoint. Build the model in its final dtype (the
        # loader does): a later model.to(bfloat16) would round this table too.
        self.register_buffer("cos_sin_cache", self.build_cache(torch.get_default_device()), persistent=False)

    def build_cache(self, device: torch.device) -> torch.Tensor:
        """[max_positions, head_dim] float32 = [cos | sin], computed on the CPU and moved to `device`
        (the loader rebuilds it after allocating a model built on the meta device)."""
        if torch.device(device).type == "meta":  # a model built on the meta device: the loader builds it again
            return torch.empty(self.max_positions, self.head_dim, device="meta")
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.rope_scaling)
        positions = torch.arange(self.max_positions, dtype=torch.float32, device="cpu")
        freqs = positions[:, None] * inv_freq[None, :]  # [max_positions, D/2]
        return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] → (cos, sin), each [T, D/2] float32. Look up once per forward pass, share
        across layers."""
        cos_sin = self.cos_sin_cache[positions]  # [T, D]
        return cos_sin.chunk(2, dim=-1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, H, D], k [T, KvH, D] rotated to their positions [T]."""
        cos, sin = self.lookup(positions)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
