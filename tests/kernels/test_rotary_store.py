"""RoPE applied as the Triton backend writes the KV pool (one kernel instead of rotary, then store),
under TRITON_INTERPRET=1: the same bytes in q and in the pool as the two passes give, for every pool
dtype; and the backend's fused forward equals rotating first."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.interpreted_triton import use_interpreter_for  # noqa: E402

use_interpreter_for(*(f"runtime.attention.triton.{name}" for name in ("tile", "kv_store", "decode", "extend", "backend")))

from dataclasses import replace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from runtime.attention.base import AttentionLayer  # noqa: E402
from runtime.attention.torch_native import TorchNativeAttention  # noqa: E402
from runtime.attention.triton.backend import TritonAttention  # noqa: E402
from runtime.attention.triton.decode import DecodeConfig  # noqa: E402
from runtime.attention.triton.extend import ExtendConfig  # noqa: E402
from runtime.attention.triton.kv_store import can_rotate_and_store, rotary_store_kv, store_kv  # noqa: E402
from runtime.model.rotary import RotaryEmbedding, apply_rotary  # noqa: E402
from runtime.triton_interpreter import round_to_bf16  # noqa: E402
from tests.kernels.test_triton_attention import clone_pool, make_batch  # noqa: E402

HEADS, KV_HEADS, DIM = 6, 2, 32  # 6 query heads: a q tile padded to 8 rows


def _step(tokens, dtype, gen):
    """q, k, v as the model hands them over: strided views of one qkv row per token."""
    qkv = (torch.randn(tokens, (HEADS + 2 * KV_HEADS) * DIM, generator=gen) * 2).to(dtype)
    qk = qkv[:, : (HEADS + KV_HEADS) * DIM].view(tokens, HEADS + KV_HEADS, DIM)
    v = qkv[:, (HEADS + KV_HEADS) * DIM :].view(tokens, KV_HEADS, DIM)
    positions = torch.randint(0, 500, (tokens,), generator=gen)
    cos, sin = RotaryEmbedding(DIM, 512, 10000.0).lookup(positions)
    return qkv, qk[:, :HEADS], qk[:, HEADS:], v, cos, sin


@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_kernel_writes_the_bytes_rotary_then_store_write(dtype, pool_dtype):
    if dtype == torch.float32 and pool_dtype == torch.bfloat16:
        pytest.skip("a float32 model keeps a float32 pool")
    gen = torch.Generator().manual_seed(3)
    qkv, q, k, v, cos, sin = _step(5, dtype, gen)
    loc = torch.tensor([9, 2, 30, 17, 4])
    pools = [torch.zeros(33, KV_HEADS, DIM, dtype=pool_dtype) for _ in range(4)]
    want_q, want_k = apply_rotary(q.clone(), cos, sin), apply_rotary(k.clone(), cos, sin)
    store_kv(pools[2], pools[3], loc, want_k, v)
    k_before = k.clone()
    rotary_store_kv(pools[0], pools[1], loc, q, k, v, cos, sin)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))  # q rotated in place, in qkv
    assert torch.equal(k, k_before)  # k is read, not rotated: attention reads K from the pool
    for ours, theirs in zip(pools[:2], pools[2:]):
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))  # and nothing else written


def test_interpreter_rounds_to_bfloat16_as_torch_casts():
    """The interpreter's own float32 → bfloat16 conversion truncates; round_to_bf16 rounds first."""
    @triton.jit
    def kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        tl.store(out_ptr + offs, round_to_bf16(x, True), mask=offs < n)

    gen = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(20000, generator=gen) * s for s in (1e-39, 1e-30, 1e-3, 1.0, 1e30)])
    ties = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8)])  # halfway: to the even neighbour
    x = torch.cat([x, ties, torch.tensor([0.0, -0.0, 2**-149, -(2**-140), 3.0e38, torch.finfo(torch.bfloat16).max])])
    out = torch.empty_like(x)
    kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    assert torch.equal(out.view(torch.int32), x.to(torch.bfloat16).float().view(torch.int32))  # -0.0 kept too


def test_half_heads_that_are_not_a_power_of_two_are_left_to_the_model():
    assert can_rotate_and_store(torch.zeros(2, 4, 32))
    assert not can_rotate_and_store(torch.zeros(2, 4, 80))  # half 40: the rotate-half tile is a power of two
    assert not can_rotate_and_store(torch.zeros(2, 4, 64)[..., ::2])


@pytest.mark.parametrize("decode", [True, False])
def test_backend_rotating_on_the_way_equals_rotating_first(decode):
    if decode:
        batch, gen = make_batch([6, 20, 33], [1, 1, 1], KV_HEADS, DIM, torch.float32, seed=5)
    else:
        batch, gen = make_batch([0, 12, 5], [9, 4, 17], KV_HEADS, DIM, torch.float32, seed=5)
    _, q, k, v, cos, sin = _step(batch.num_tokens, torch.float32, gen)
    layer = AttentionLayer(0, HEADS, KV_HEADS, DIM, scaling=DIM**-0.5)
    backends = [TritonAttention(num_splits=2, decode_config=DecodeConfig(block_n=16), extend_config=ExtendConfig(16, 16))
                for _ in range(2)]
    batches = [replace(batch, kv_pool=clone_pool(batch.kv_pool)) for _ in range(2)]
    for backend, step in zip(backends, batches):
        backend.prepare(step)
    assert backends[0].can_fuse_rotary(q)
    fused = backends[0].forward(q.clone(), k.clone(), v, layer, batches[0], rotary=(cos, sin))
    first = backends[1].forward(apply_rotary(q.clone(), cos, sin), apply_rotary(k.clone(), cos, sin), v, layer, batches[1])
    assert torch.equal(fused, first)
    for ours, theirs in zip(batches[0].kv_pool.k_buffers + batches[0].kv_pool.v_buffers,
                            batches[1].kv_pool.k_buffers + batches[1].kv_pool.v_buffers):
        assert torch.equal(ours, theirs)


def test_a_backend_that_cannot_rotate_refuses_unrotated_inputs():
    batch, gen = make_batch([3], [4], KV_HEADS, DIM, torch.float32)
    _, q, k, v, cos, sin = _step(batch.num_tokens, torch.float32, gen)
    backend = TorchNativeAttention()
    backend.prepare(batch)
    assert not backend.can_fuse_rotary(q)
    with pytest.raises(ValueError, match="TorchNativeAttention cannot rotate q and k itself; apply RoPE first"):
        backend.forward(q, k, v, AttentionLayer(0, HEADS, KV_HEADS, DIM, scaling=0.2), batch, rotary=(cos, sin))


def test_start_up_checks_the_fused_kernel_and_falls_back_when_it_disagrees(monkeypatch):
    """warm_up checks RoPE in the KV write against torch once; a kernel computing wrongly (faked:
    it forgets to rotate q) leaves the rotation to the model."""
    import runtime.attention.triton.kv_store as kv_store

    layer = AttentionLayer(0, HEADS, KV_HEADS, DIM, scaling=DIM**-0.5)
    q = torch.zeros(2, HEADS, DIM)
    backend = TritonAttention(extend_config=ExtendConfig(16, 16))
    backend.warm_up(layer, torch.float32, torch.float32, torch.device("cpu"))
    assert backend.can_fuse_rotary(q)
    assert kv_store.rotary_store_agrees(HEADS, KV_HEADS, DIM, torch.bfloat16, torch.float8_e4m3fn, torch.device("cpu"))

    real = kv_store.rotary_store_kv
    monkeypatch.setattr(kv_store, "rotary_store_kv", lambda kb, vb, loc, q, *rest: real(kb, vb, loc, q.clone(), *rest))
    backend = TritonAttention(extend_config=ExtendConfig(16, 16))
    backend.warm_up(layer, torch.float32, torch.float32, torch.device("cpu"))
    assert not backend.can_fuse_rotary(q)


@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("splits", [2, 3])
def test_rope_inside_decode_attention_gives_the_bytes_of_rotary_store_then_decode(pool_dtype, splits):
    """Small decode batches rotate q and the newest k inside the attention kernel, which also writes
    the new K/V (NewKV): the same output and pool bytes as rotary_store_kv then decode. The newest
    key falls in a split's first tile (prefetched before the PDL wait elsewhere) and in a later one."""
    from runtime.attention.triton.decode import NewKV, decode_attention_table

    dtype = torch.float32 if pool_dtype == torch.float32 else torch.bfloat16
    gen = torch.Generator().manual_seed(11)
    seq_lens = [1, 17, 40, 70]  # block 16: newest key at 0, 16, 39, 69
    _, q, k, v, cos, sin = _step(len(seq_lens), dtype, gen)
    starts = torch.tensor([0, 1, 18, 58])
    slots = 129
    table = (torch.randperm(slots - 1, generator=gen) + 1).to(torch.int32)  # scattered; slot 0 nobody's
    loc = table[starts + torch.tensor(seq_lens) - 1].to(torch.int64)
    lengths = torch.tensor(seq_lens, dtype=torch.int32)
    pools = [(torch.randn(slots, KV_HEADS, DIM, generator=gen) * 2).to(pool_dtype) for _ in range(2)]
    config = DecodeConfig(block_n=16)
    fused_pools = [p.clone() for p in pools]
    q_before = q.clone()
    fused = decode_attention_table(q, *fused_pools, table, starts, 1, lengths, DIM**-0.5, splits, config=config,
                                   new_kv=NewKV(k, v, cos, sin, loc))
    assert torch.equal(q, q_before)  # q is rotated in registers only
    rotated = q.clone()
    rotary_store_kv(pools[0], pools[1], loc, rotated, k, v, cos, sin)
    plain = decode_attention_table(rotated, *pools, table, starts, 1, lengths, DIM**-0.5, splits, config=config)
    assert torch.equal(fused.view(torch.uint8), plain.view(torch.uint8))
    for ours, theirs in zip(fused_pools, pools):
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))  # the new K/V, and nothing else


def test_backend_rotates_inside_decode_only_for_several_splits_and_only_when_checked(monkeypatch):
    """One-split (large, bandwidth-bound) batches keep rotary_store_kv; so does a device where the
    start-up check of RoPE inside decode failed."""
    import runtime.attention.triton.backend as backend_module

    calls = []
    real = backend_module.rotary_store_kv
    monkeypatch.setattr(backend_module, "rotary_store_kv", lambda *a: calls.append(1) or real(*a))
    layer = AttentionLayer(0, HEADS, KV_HEADS, DIM, scaling=DIM**-0.5)
    outputs = {}
    for label, splits, agrees in (("inside", 2, True), ("one split", 1, True), ("check failed", 2, False)):
        monkeypatch.setattr(backend_module, "decode_rope_agrees", lambda *a, ok=agrees: ok)
        backend = TritonAttention(num_splits=splits, decode_config=DecodeConfig(block_n=16),
                                  extend_config=ExtendConfig(16, 16))
        backend.warm_up(layer, torch.float32, torch.float32, torch.device("cpu"))
        batch, gen = make_batch([6, 20, 33], [1, 1, 1], KV_HEADS, DIM, torch.float32, seed=5)
        _, q, k, v, cos, sin = _step(batch.num_tokens, torch.float32, gen)
        backend.prepare(batch)
        calls.clear()
        outputs[label] = backend.forward(q, k, v, layer, batch, rotary=(cos, sin))
        assert len(calls) == (0 if label == "inside" else 1), label
    torch.testing.assert_close(outputs["inside"], outputs["one split"], atol=1e-5, rtol=1e-5)
    assert torch.equal(outputs["inside"], outputs["check failed"])  # two splits both: the same arithmetic


def test_start_up_check_of_rope_inside_decode_passes_here():
    from runtime.attention.triton.backend import decode_rope_agrees

    layer = AttentionLayer(0, HEADS, KV_HEADS, DIM, scaling=DIM**-0.5)
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        assert decode_rope_agrees(layer, torch.bfloat16, kv_dtype, torch.device("cpu"), DecodeConfig(block_n=16))
