"""Fused Triton elementwise kernels (interpreted on the CPU) against the torch code they replace."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton is imported

import pytest
import torch

pytest.importorskip("triton")

from runtime.model import fused  # noqa: E402
from runtime.model.layers import add_rms_norm, rms_norm  # noqa: E402
from runtime.model.rotary import RotaryEmbedding, apply_rotary  # noqa: E402


@pytest.mark.parametrize("cols", [64, 96, 256])
def test_rms_norm_matches_torch(cols):
    torch.manual_seed(0)
    x, w = torch.randn(5, cols), torch.randn(cols)
    assert torch.allclose(fused.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6), atol=1e-6)


def test_rms_norm_with_residual_returns_the_sum_too():
    torch.manual_seed(1)
    x, r, w = torch.randn(4, 128), torch.randn(4, 128), torch.randn(128)
    normed, new_res = fused.rms_norm(x, w, 1e-5, residual=r)
    ref_normed, ref_res = add_rms_norm(x, r, w, 1e-5)
    assert torch.allclose(new_res, ref_res) and torch.allclose(normed, ref_normed, atol=1e-6)


def test_silu_and_mul_matches_torch():
    torch.manual_seed(2)
    gate_up = torch.randn(3, 2 * 200)
    gate, up = gate_up.split(200, dim=-1)
    assert torch.allclose(fused.silu_and_mul(gate_up), torch.nn.functional.silu(gate) * up, atol=1e-6)


def test_rotary_in_place_on_a_strided_view_matches_torch():
    torch.manual_seed(3)
    rope = RotaryEmbedding(32, 64, 10000.0)
    positions = torch.tensor([0, 5, 17, 63])
    cos, sin = rope.lookup(positions)
    qkv = torch.randn(4, (4 + 2 + 2) * 32)
    q = qkv[:, : 4 * 32].view(4, 4, 32)
    k = qkv[:, 4 * 32 : 6 * 32].view(4, 2, 32)
    want_q, want_k = apply_rotary(q.clone(), cos, sin), apply_rotary(k.clone(), cos, sin)
    v_before = qkv[:, 6 * 32 :].clone()
    fused.rotary_(q, cos, sin)
    fused.rotary_(k, cos, sin)
    assert torch.allclose(q, want_q, atol=1e-6) and torch.allclose(k, want_k, atol=1e-6)
    assert torch.equal(qkv[:, 6 * 32 :], v_before)  # v untouched


def test_rotary_of_q_and_k_heads_in_one_launch_matches_separate_rotations():
    """The model rotates q and k heads together (one launch per layer): 5 + 2 heads, a count the
    kernel pads to 8, must give the per-tensor rotations and leave v alone."""
    torch.manual_seed(4)
    rope = RotaryEmbedding(32, 64, 500000.0)
    cos, sin = rope.lookup(torch.tensor([1, 9, 40]))
    qkv = torch.randn(3, (5 + 2 + 2) * 32)
    want_q = apply_rotary(qkv[:, : 5 * 32].reshape(3, 5, 32).clone(), cos, sin)
    want_k = apply_rotary(qkv[:, 5 * 32 : 7 * 32].reshape(3, 2, 32).clone(), cos, sin)
    v_before = qkv[:, 7 * 32 :].clone()
    qk = qkv[:, : 7 * 32].view(3, 7, 32)
    fused.rotary_(qk, cos, sin)
    assert torch.allclose(qk[:, :5], want_q, atol=1e-6) and torch.allclose(qk[:, 5:], want_k, atol=1e-6)
    assert torch.equal(qkv[:, 7 * 32 :], v_before)
