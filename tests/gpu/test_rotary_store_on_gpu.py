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


@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("batch", [1, 5])
def test_rope_inside_decode_attention_matches_rotary_store_then_decode(pool_dtype, batch):
    """Small decode batches rotate inside the attention kernel (decode.NewKV), with PDL on as the
    engine runs it. Against rotary_store_kv then decode at the 8B head shape: the pool's new K/V
    and the output. Both round RoPE through the same float32 formulas; equal bytes are expected,
    and the start-up check (backend.decode_rope_agrees) allows one rounding step."""
    from runtime.attention.triton.decode import NewKV, decode_attention_table
    from runtime.attention.triton.splits import choose_num_splits
    from runtime.attention.triton.kv_store import rotary_store_kv
    from runtime.model.rotary import RotaryEmbedding

    gen = torch.Generator(device="cuda").manual_seed(batch)
    seq_lens = torch.randint(200, 1500, (batch,), device="cuda", generator=gen).to(torch.int32)
    total = int(seq_lens.sum())
    table = (torch.randperm(total + 16, device="cuda", generator=gen)[:total] + 1).to(torch.int32)
    starts = torch.cumsum(seq_lens, 0) - seq_lens
    loc = table[(starts + seq_lens - 1).long()].long()
    pools = [(torch.randn(total + 17, KV_HEADS, DIM, device="cuda", generator=gen)).to(pool_dtype) for _ in range(2)]
    q = torch.randn(batch, HEADS, DIM, device="cuda", generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(batch, KV_HEADS, DIM, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    with torch.device("cuda"):
        cos, sin = RotaryEmbedding(DIM, 8192, 500000.0).lookup((seq_lens - 1).long())
    splits = choose_num_splits(batch, KV_HEADS, 1500, torch.cuda.get_device_properties(0).multi_processor_count)
    assert splits > 1
    fused_pools = [p.clone() for p in pools]
    fused = decode_attention_table(q, *fused_pools, table, starts, 1, seq_lens, DIM**-0.5, splits,
                                   new_kv=NewKV(k, v, cos, sin, loc))
    rotated = q.clone()
    rotary_store_kv(pools[0], pools[1], loc, rotated, k, v, cos, sin)
    plain = decode_attention_table(rotated, *pools, table, starts, 1, seq_lens, DIM**-0.5, splits)
    torch.cuda.synchronize()
    for ours, theirs in zip(fused_pools, pools):
        differing = int((ours.view(torch.uint8) != theirs.view(torch.uint8)).sum())
        assert differing == 0, f"{differing} bytes of the pool differ"
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
