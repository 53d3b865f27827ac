"""On a CUDA machine (skipped elsewhere): RoPE applied as the Triton backend writes the KV gives the
bytes of the rotary kernel followed by the KV store, at the Llama-3-8B head shape, for bf16 and fp8
pools. On the GPU both kernels compile the rotation to the same fused multiply-adds; this checks it."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]

HEADS, KV_HEADS, DIM = 32, 8, 128


@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("tokens", [1, 37, 4096])
def test_fused_rotary_store_writes_the_bytes_of_rotary_then_store(pool_dtype, tokens):
    from runtime.attention.triton.kv_store import rotary_store_kv, store_kv
    from runtime.model import fused
    from runtime.model.rotary import RotaryEmbedding

    gen = torch.Generator(device="cuda").manual_seed(tokens)
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * DIM, device="cuda", generator=gen).to(torch.bfloat16)
    positions = torch.randint(0, 8000, (tokens,), device="cuda", generator=gen)
    with torch.device("cuda"):
        cos, sin = RotaryEmbedding(DIM, 8192, 500000.0).lookup(positions)
    loc = torch.randperm(2 * tokens + 8, device="cuda", generator=gen)[:tokens] + 1
    pools = [torch.zeros(2 * tokens + 9, KV_HEADS, DIM, device="cuda", dtype=pool_dtype) for _ in range(4)]

    def views(t):
        qk = t[:, : (HEADS + KV_HEADS) * DIM].view(tokens, HEADS + KV_HEADS, DIM)
        return qk, qk[:, :HEADS], qk[:, HEADS:], t[:, (HEADS + KV_HEADS) * DIM :].view(tokens, KV_HEADS, DIM)

    two_pass = qkv.clone()
    qk, _, k, v = views(two_pass)
    fused.rotary_(qk, cos, sin)  # the model's path: q and k heads in one launch
    store_kv(pools[2], pools[3], loc, k, v)
    one_pass = qkv.clone()
    _, q, k, v = views(one_pass)
    rotary_store_kv(pools[0], pools[1], loc, q, k, v, cos, sin)
    torch.cuda.synchronize()
    assert torch.equal(one_pass[:, : HEADS * DIM].view(torch.int16), two_pass[:, : HEADS * DIM].view(torch.int16))
    for ours, theirs in zip(pools[:2], pools[2:]):
        assert torch.equal(ours.view(torch.uint8), theirs.view(torch.uint8))
