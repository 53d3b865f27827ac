"""kv_cache_dtype="fp8_e4m3"/"fp8_e5m2": the KV pool stores fp8, the Triton kernels write and read it
exactly as torch does, and the engine sizes the pool by the smaller bytes per token.

Triton's CPU interpreter rounds float32 → fp8 wrongly when the mantissa carries into the exponent
(1.99 → 1.0), which the GPU's conversion does not do; under the interpreter the store rounds in
float32 first (runtime/triton_interpreter.py), so it is checked here on any values, and the GPU's
own conversion in tests/gpu. The attention tests use representable values (the pool's contents)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.interpreted_triton import use_interpreter_for  # noqa: E402

use_interpreter_for(*(f"runtime.attention.triton.{name}" for name in ("tile", "kv_store", "decode", "extend", "backend")))

from dataclasses import replace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from runtime.attention.base import AttentionLayer  # noqa: E402
from runtime.attention.torch_native import TorchNativeAttention  # noqa: E402
from runtime.attention.triton.backend import TritonAttention  # noqa: E402
from runtime.attention.triton.decode import DecodeConfig  # noqa: E402
from runtime.attention.triton.extend import ExtendConfig  # noqa: E402
from runtime.attention.triton.kv_store import store_kv  # noqa: E402
from runtime.cache.pool import KVPool  # noqa: E402
from runtime.model_runner import resolve_kv_dtype  # noqa: E402
from tests.kernels.test_triton_attention import clone_pool, make_batch  # noqa: E402

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def _representable(shape, dtype, gen, scale=2.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype).float()


@pytest.mark.parametrize("dtype", FP8)
def test_store_writes_fp8_slots_like_torch(dtype):
    gen = torch.Generator().manual_seed(0)
    k_buffer = torch.zeros(40, 2, 16, dtype=dtype)
    v_buffer = torch.zeros_like(k_buffer)
    loc = torch.tensor([3, 17, 5, 39])
    k, v = _representable((4, 2, 16), dtype, gen), _representable((4, 2, 16), dtype, gen)
    store_kv(k_buffer, v_buffer, loc, k, v)
    assert torch.equal(k_buffer[loc].float(), k) and torch.equal(v_buffer[loc].float(), v)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[loc] = False
    assert not k_buffer[untouched].float().any()


@pytest.mark.parametrize("dtype", FP8)
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
def test_store_rounds_any_value_as_torch_casts(dtype, source):
    gen = torch.Generator().manual_seed(1)
    k_buffer = torch.zeros(8, 2, 16, dtype=dtype)
    v_buffer = torch.zeros_like(k_buffer)
    loc = torch.tensor([6, 1])
    limit = torch.finfo(dtype).max
    k = (torch.randn(2, 2, 16, generator=gen) * 3).to(source)
    v = (torch.randn(2, 2, 16, generator=gen) * 3e-3).to(source)  # subnormals too
    k[0, 0, :4] = torch.tensor([1.99, -1.9375, 0.0, limit])  # carries, a zero, the largest value
    store_kv(k_buffer, v_buffer, loc, k, v)
    assert torch.equal(k_buffer[loc].view(torch.uint8), k.float().to(dtype).view(torch.uint8))
    assert torch.equal(v_buffer[loc].view(torch.uint8), v.float().to(dtype).view(torch.uint8))


def _fp8_batch(prefix_lens, extend_lens, dtype):
    batch, gen = make_batch(prefix_lens, extend_lens, 2, 32, torch.float32, seed=4)
    src = batch.kv_pool
    pool = KVPool(src.size, src.num_layers, src.num_kv_heads, src.head_dim, dtype, src.k_buffers[0].device)
    for dst, values in zip(pool.k_buffers + pool.v_buffers, src.k_buffers + src.v_buffers):
        dst.copy_(values.to(dtype))
    return replace(batch, kv_pool=pool), gen


@pytest.mark.parametrize("dtype", FP8)
@pytest.mark.parametrize("decode", [True, False])
def test_triton_attention_over_an_fp8_pool_matches_torch_native(dtype, decode):
    if decode:
        batch, gen = _fp8_batch([6, 20, 33], [1, 1, 1], dtype)
    else:
        batch, gen = _fp8_batch([0, 12, 5], [9, 4, 17], dtype)
    layer = AttentionLayer(1, 4, 2, 32, scaling=32**-0.5)
    q = torch.randn(batch.num_tokens, 4, 32, generator=gen)
    k = _representable((batch.num_tokens, 2, 32), dtype, gen)
    v = _representable((batch.num_tokens, 2, 32), dtype, gen)
    reference = TorchNativeAttention()
    reference.prepare(batch)
    expected = reference.forward(q, k, v, layer, batch)
    ours_batch = replace(batch, kv_pool=clone_pool(batch.kv_pool))
    backend = TritonAttention(num_splits=2, decode_config=DecodeConfig(block_n=16), extend_config=ExtendConfig(16, 16, pack_gqa=False))
    backend.prepare(ours_batch)
    actual = backend.forward(q, k, v, layer, ours_batch)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    for ours, theirs in zip(ours_batch.kv_pool.k_buffers + ours_batch.kv_pool.v_buffers,
                            batch.kv_pool.k_buffers + batch.kv_pool.v_buffers):
        assert torch.equal(ours.float(), theirs.float())  # the step's K/V written to the same slots


def test_kv_dtype_option_resolves_and_names_the_field_when_wrong():
    assert resolve_kv_dtype("auto", torch.bfloat16) is torch.bfloat16
    assert resolve_kv_dtype("fp8_e4m3", torch.bfloat16) is torch.float8_e4m3fn
    assert resolve_kv_dtype("fp8_e5m2", torch.float32) is torch.float8_e5m2
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        resolve_kv_dtype("int4", torch.bfloat16)
