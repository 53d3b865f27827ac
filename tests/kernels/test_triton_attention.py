"""Our Triton attention kernels against the torch-native reference on identical pools and batches.

On CPU the kernels run in Triton's interpreter (small shapes); with CUDA they are compiled, and the
`gpu` tests add real model shapes.
"""

import pytest
import torch

from tests.interpreted_triton import use_interpreter_for

# NOTE: before triton and our kernel modules are first imported (the interpreter is chosen at decoration)
use_interpreter_for(*(f"runtime.attention.triton.{name}" for name in ("tile", "kv_store", "decode", "extend", "backend")))
HAS_CUDA = torch.cuda.is_available()
pytest.importorskip("triton")

from dataclasses import replace  # noqa: E402

from runtime.attention.base import AttentionLayer, build_kv_indices, create_attention_backend
from runtime.attention.torch_native import TorchNativeAttention
from runtime.attention.triton.backend import TritonAttention, gather_kv_indices
from runtime.attention.triton.decode import DecodeConfig
from runtime.attention.triton.splits import choose_num_splits
from runtime.attention.triton.extend import ExtendConfig
from runtime.attention.triton.kv_store import store_kv
from runtime.cache.pool import KVPool, ReqToTokenPool
from runtime.forward_batch import ForwardBatch, ForwardMode

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
LAYER_ID = 1  # not layer 0, so a kernel that ignores layer_id reads the wrong buffers
# Small tiles on CPU so that short sequences still cross several KV tiles and query blocks.
SMALL_DECODE = DecodeConfig(block_n=16)
SMALL_EXTEND = ExtendConfig(block_m=16, block_n=16, pack_gqa=False)  # one query head per program
PACKED_EXTEND = ExtendConfig(block_m=16, block_n=16, pack_gqa=True)  # 16 rows: 16 / group tokens x the group
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
gpu = pytest.mark.gpu


def make_batch(prefix_lens, extend_lens, num_kv_heads, head_dim, dtype, scattered=True, seed=0):
    """A pool full of random K/V, one req_to_token row per request, and a ForwardBatch for the step
    (a decode batch when every request adds one token). Returns the batch and the random generator."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool_size = sum(seq_lens) + 37  # room for slots nobody owns
    pool = KVPool(pool_size, 2, num_kv_heads, head_dim, dtype, DEVICE)
    for buffer in pool.k_buffers + pool.v_buffers:
        buffer.copy_(torch.randn(buffer.shape, generator=gen))
    table = ReqToTokenPool(len(seq_lens) + 3, max(seq_lens) + 5, DEVICE)
    order = torch.randperm(pool_size, generator=gen) if scattered else torch.arange(pool_size)
    slots = (order + 1).to(DEVICE)  # slot 0 is the padding slot
    rows, new_slots, offset = [], [], 0
    for seq_len, extend_len in zip(seq_lens, extend_lens):
        row = table.allocate()
        table.write(row, 0, slots[offset : offset + seq_len])
        rows.append(row)
        new_slots.append(slots[offset + seq_len - extend_len : offset + seq_len])
        offset += seq_len
    num_tokens = sum(extend_lens)
    decode = all(e == 1 for e in extend_lens)
    extend_fields = {} if decode else {
        "extend_prefix_lens": torch.tensor(prefix_lens, dtype=torch.int32, device=DEVICE),
        "extend_seq_lens": torch.tensor(extend_lens, dtype=torch.int32, device=DEVICE),
        "extend_prefix_lens_cpu": torch.tensor(prefix_lens, dtype=torch.int64),
        "extend_seq_lens_cpu": torch.tensor(extend_lens, dtype=torch.int64),
    }
    batch = ForwardBatch(
        mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
        batch_size=len(seq_lens),
        input_ids=torch.zeros(num_tokens, dtype=torch.int64, device=DEVICE),
        positions=torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)]).to(DEVICE),
        req_pool_indices=torch.tensor(rows, dtype=torch.int64, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        out_cache_loc=torch.cat(new_slots).to(torch.int64),
        req_to_token=table.req_to_token,
        kv_pool=pool,
        seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int64),
        **extend_fields,
    )
    return batch, gen


def clone_pool(pool: KVPool) -> KVPool:
    twin = KVPool(pool.size, pool.num_layers, pool.num_kv_heads, pool.head_dim, pool.dtype, DEVICE)
    for dst, src in zip(twin.k_buffers + twin.v_buffers, pool.k_buffers + pool.v_buffers):
        dst.copy_(src)
    return twin


def run_both(batch, gen, num_heads, backend, dtype):
    """Run one layer through torch-native and `backend` on twin pools; return outputs and pools."""
    pool = batch.kv_pool
    head_dim, num_kv_heads = pool.head_dim, pool.num_kv_heads
    layer = AttentionLayer(LAYER_ID, num_heads, num_kv_heads, head_dim, scaling=head_dim**-0.5)
    num_tokens = batch.num_tokens
    q = torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(DEVICE, dtype)
    k = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    v = torch.randn(num_tokens, num_kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    ours_batch = replace(batch, kv_pool=clone_pool(pool))
    reference = TorchNativeAttention()
    reference.prepare(batch)
    expected = reference.forward(q, k, v, layer, batch)
    backend.prepare(ours_batch)
    actual = backend.forward(q, k, v, layer, ours_batch)
    return actual, expected, ours_batch.kv_pool, pool


def assert_close(actual, expected, dtype):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def assert_same_pool(ours: KVPool, reference: KVPool):
    for a, b in zip(ours.k_buffers + ours.v_buffers, reference.k_buffers + reference.v_buffers):
        assert torch.equal(a, b)


def decode_batch(seq_lens, num_kv_heads, head_dim, dtype, **kwargs):
    return make_batch([n - 1 for n in seq_lens], [1] * len(seq_lens), num_kv_heads, head_dim, dtype, **kwargs)


# ---- metadata and split planning -------------------------------------------------------------


def test_backend_is_registered_and_ignores_unknown_kwargs():
    backend = create_attention_backend("triton", device=DEVICE, num_heads=4, some_future_option=True)
    assert isinstance(backend, TritonAttention)


def test_kv_indices_are_every_request_slots_in_sequence_order():
    batch, _ = make_batch([0, 5, 30], [7, 3, 1], num_kv_heads=2, head_dim=16, dtype=torch.float32)
    expected_indptr, expected_indices = build_kv_indices(batch)
    kv_indptr, kv_indices = gather_kv_indices(batch.req_to_token, batch.req_pool_indices, batch.seq_lens, 46)
    assert kv_indptr.dtype == kv_indices.dtype == torch.int32
    assert kv_indptr.tolist() == expected_indptr.tolist() == [0, 7, 15, 46]
    assert kv_indices.tolist() == expected_indices.tolist()


def test_split_count_fills_the_gpu_but_keeps_splits_long():
    # 2 requests × 8 KV heads = 16 programs; 132 SMs want ~17 splits, and 8k tokens allow them
    assert choose_num_splits(2, 8, 8192, num_sms=132) == 17
    # a short context caps the splits at one per min_split_len tokens
    assert choose_num_splits(2, 8, 600, num_sms=132, min_split_len=256) == 3
    # one request: split until each split holds min_split_len (64) tokens
    assert choose_num_splits(1, 8, 1024, num_sms=132) == 16
    # a batch that already fills the GPU is not split
    assert choose_num_splits(64, 8, 4096, num_sms=132) == 1
    assert choose_num_splits(1, 1, 1 << 20, num_sms=132, max_splits=64) == 64
    assert choose_num_splits(1, 1, 0, num_sms=132) == 1


# ---- storing K/V ------------------------------------------------------------------------------


def test_store_writes_each_token_to_its_slot_and_nothing_else():
    gen = torch.Generator().manual_seed(3)
    k_buffer = torch.randn(50, 2, 16, generator=gen).to(DEVICE, torch.float16)
    v_buffer = torch.randn(50, 2, 16, generator=gen).to(DEVICE, torch.float16)
    # k and v as views of a fused qkv projection: row stride larger than num_kv_heads * head_dim
    qkv = torch.randn(6, 3 * 32, generator=gen).to(DEVICE)
    k, v = qkv[:, 32:64].view(6, 2, 16), qkv[:, 64:].view(6, 2, 16)
    loc = torch.tensor([9, 2, 44, 17, 30, 1], device=DEVICE)
    expected_k, expected_v = k_buffer.clone(), v_buffer.clone()
    expected_k[loc], expected_v[loc] = k.half(), v.half()
    store_kv(k_buffer, v_buffer, loc, k, v)
    assert torch.equal(k_buffer, expected_k) and torch.equal(v_buffer, expected_v)


# ---- decode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 32), (4, 4, 16), (8, 1, 64)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_matches_reference_with_grouped_heads(num_heads, num_kv_heads, head_dim, num_splits):
    batch, gen = decode_batch([1, 17, 40], num_kv_heads, head_dim, torch.float32)
    backend = TritonAttention(num_splits=num_splits, decode_config=SMALL_DECODE)
    actual, expected, ours, reference = run_both(batch, gen, num_heads, backend, torch.float32)
    assert_close(actual, expected, torch.float32)
    assert_same_pool(ours, reference)


def test_decode_with_more_splits_than_kv_tiles_leaves_no_gaps():
    # 8 splits of a 16-token tile: most splits of the short requests are empty and must not count
    batch, gen = decode_batch([2, 16, 33, 9], 2, 32, torch.float32, scattered=False)
    backend = TritonAttention(num_splits=8, decode_config=SMALL_DECODE)
    actual, expected, _, _ = run_both(batch, gen, 4, backend, torch.float32)
    assert_close(actual, expected, torch.float32)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,num_splits", [
    (4, 2, 32, 3),    # one chunk of splits
    (6, 2, 16, 5),    # a group of 3 heads, padded to 4
    (8, 1, 64, 40),   # 40 splits in chunks of 16 (MERGE_TILE / (8 heads x 64)); short requests leave most empty
    (8, 1, 128, 21),  # chunks of 8
])
def test_merging_in_the_last_split_gives_the_merge_kernels_bits_and_leaves_the_counters_zero(
        num_heads, num_kv_heads, head_dim, num_splits):
    from runtime.attention.triton.decode import decode_attention_table, merge_workspace

    # the longest request fills more splits than one chunk holds, so the running maximum moves
    batch, gen = decode_batch([1, 17, 40, 700], num_kv_heads, head_dim, torch.float32)
    pool, table = batch.kv_pool, batch.req_to_token
    q = torch.randn(4, num_heads, head_dim, generator=gen).to(DEVICE)
    args = (q, pool.k_buffers[1], pool.v_buffers[1], table, batch.req_pool_indices, table.stride(0), batch.seq_lens,
            head_dim**-0.5, num_splits)
    counters = merge_workspace(4 + 3, num_kv_heads, DEVICE)  # larger than needed: the rest is untouched
    merged_in_split = decode_attention_table(*args, config=SMALL_DECODE, arrivals=counters)
    assert torch.count_nonzero(counters) == 0
    again = decode_attention_table(*args, config=SMALL_DECODE, arrivals=counters)  # the counters are reusable
    merge_kernel = decode_attention_table(*args, config=SMALL_DECODE)
    assert torch.equal(merged_in_split, merge_kernel) and torch.equal(again, merge_kernel)
    unsplit = decode_attention_table(*args[:-1], 1, config=SMALL_DECODE)  # no merge at all
    assert_close(merged_in_split, unsplit, torch.float32)
    # a row with no KV at all (every split empty) merges to zeros, not NaN, and still counts in
    batch.seq_lens[0] = 0
    empty_row = decode_attention_table(*args, config=SMALL_DECODE, arrivals=counters)
    assert torch.count_nonzero(counters) == 0 and torch.equal(empty_row[0], torch.zeros_like(empty_row[0]))
    assert torch.equal(empty_row, decode_attention_table(*args, config=SMALL_DECODE))
    with pytest.raises(AssertionError, match="smaller than B x KvH"):
        decode_attention_table(*args, config=SMALL_DECODE, arrivals=merge_workspace(3, num_kv_heads, DEVICE))


def test_splits_by_length_give_a_request_the_same_bits_alone_or_in_any_batch():
    from runtime.attention.triton.decode import decode_attention_table, merge_workspace
    from runtime.attention.triton.splits import LengthSplits

    lengths = [1, 17, 40, 700]  # one split, two, three, and more than max_splits allows (capped)
    batch, gen = decode_batch(lengths, 2, 32, torch.float32)
    pool, table = batch.kv_pool, batch.req_to_token
    q = torch.randn(4, 4, 32, generator=gen).to(DEVICE)
    by_length = LengthSplits(min_len=16, max_splits=8)
    counters = merge_workspace(4, 2, DEVICE)

    def decode(rows, num_splits, arrivals=counters):
        return decode_attention_table(q[rows], pool.k_buffers[1], pool.v_buffers[1], table, batch.req_pool_indices[rows],
                                      table.stride(0), batch.seq_lens[rows], 32**-0.5, num_splits, config=SMALL_DECODE,
                                      arrivals=arrivals, length_splits=by_length)

    everyone = list(range(4))
    together = decode(everyone, by_length.launch_splits(700))
    assert by_length.launch_splits(700) == 8 and by_length.launch_splits(17) == 2
    assert torch.equal(decode(everyone, 13), together)  # a wider launch (a CUDA graph's) changes nothing
    assert torch.equal(decode(everyone, 8, arrivals=None), together)  # nor the merge kernel
    for i, length in enumerate(lengths):
        assert torch.equal(decode([i], by_length.launch_splits(length)), together[i:i + 1]), length
    assert torch.count_nonzero(counters) == 0
    assert_close(together, decode_attention_table(
        q, pool.k_buffers[1], pool.v_buffers[1], table, batch.req_pool_indices, table.stride(0), batch.seq_lens,
        32**-0.5, 1, config=SMALL_DECODE), torch.float32)


def test_the_backend_merges_in_the_split_and_keeps_outgrown_counters():
    batch, gen = decode_batch([5, 40, 28], 2, 32, torch.float32)
    backend = TritonAttention(num_splits=3, decode_config=SMALL_DECODE)
    actual, expected, _, _ = run_both(batch, gen, 8, backend, torch.float32)
    assert_close(actual, expected, torch.float32)
    first = backend._arrivals[DEVICE]
    assert first.numel() == 3 * 2 and torch.count_nonzero(first) == 0
    bigger, gen = decode_batch([5, 40, 28, 9, 12], 2, 32, torch.float32)
    actual, expected, _, _ = run_both(bigger, gen, 8, backend, torch.float32)
    assert_close(actual, expected, torch.float32)
    assert backend._arrivals[DEVICE].numel() == 12 and backend._outgrown == [first]  # a graph may still read it
    plain = TritonAttention(num_splits=3, decode_config=SMALL_DECODE, merge_in_split=False)
    actual, expected, _, _ = run_both(*decode_batch([5, 40, 28], 2, 32, torch.float32), 8, plain, torch.float32)
    assert_close(actual, expected, torch.float32)
    assert not plain._arrivals  # the merge kernel ran


def test_flat_index_form_and_table_form_agree():
    # the backend reads the req→token table; benchmarks and tools pass kv_indptr / kv_indices
    from runtime.attention.triton.decode import decode_attention, decode_attention_table

    batch, gen = decode_batch([3, 21, 40], 2, 32, torch.float32)
    pool = batch.kv_pool
    q = torch.randn(3, 4, 32, generator=gen).to(DEVICE)
    kv_indptr, kv_indices = gather_kv_indices(batch.req_to_token, batch.req_pool_indices, batch.seq_lens, 64)
    flat = decode_attention(q, pool.k_buffers[1], pool.v_buffers[1], kv_indptr, kv_indices, 0.2, 3, config=SMALL_DECODE)
    table = batch.req_to_token
    paged = decode_attention_table(q, pool.k_buffers[1], pool.v_buffers[1], table, batch.req_pool_indices,
                                   table.stride(0), batch.seq_lens, 0.2, 3, config=SMALL_DECODE)
    torch.testing.assert_close(flat, paged, atol=1e-6, rtol=1e-6)


def test_decode_with_automatic_split_count():
    batch, gen = decode_batch([5, 40, 28], 2, 32, torch.float32)
    actual, expected, _, _ = run_both(batch, gen, 8, TritonAttention(decode_config=SMALL_DECODE), torch.float32)
    assert_close(actual, expected, torch.float32)


def test_decode_in_float16():
    batch, gen = decode_batch([3, 40, 21], 2, 32, torch.float16)
    backend = TritonAttention(num_splits=2, decode_config=SMALL_DECODE)
    actual, expected, _, _ = run_both(batch, gen, 4, backend, torch.float16)
    assert_close(actual, expected, torch.float16)


# ---- extend -----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL_EXTEND, PACKED_EXTEND], ids=["head_per_program", "group_per_program"])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 32), (4, 4, 16), (8, 1, 64), (6, 2, 16)])
def test_extend_matches_reference_with_and_without_cached_prefix(num_heads, num_kv_heads, head_dim, config):
    # prefix 0 (fresh prompt), a prefix longer than a tile, and a request crossing query blocks; a
    # group of 3 heads pads a packed program's rows to 4 per token
    batch, gen = make_batch([0, 21, 3], [19, 5, 37], num_kv_heads, head_dim, torch.float32)
    backend = TritonAttention(extend_config=config)
    actual, expected, ours, reference = run_both(batch, gen, num_heads, backend, torch.float32)
    assert_close(actual, expected, torch.float32)
    assert_same_pool(ours, reference)


def test_extend_with_contiguous_slots_and_single_token_requests():
    batch, gen = make_batch([0, 40, 12, 0], [1, 1, 16, 2], 2, 32, torch.float32, scattered=False)
    actual, expected, _, _ = run_both(batch, gen, 4, TritonAttention(extend_config=SMALL_EXTEND), torch.float32)
    assert_close(actual, expected, torch.float32)


def test_extend_with_default_tiles():
    batch, gen = make_batch([0, 9], [33, 24], 2, 32, torch.float32)
    actual, expected, _, _ = run_both(batch, gen, 4, TritonAttention(), torch.float32)
    assert_close(actual, expected, torch.float32)


def test_extend_in_float16():
    batch, gen = make_batch([0, 17], [20, 6], 2, 32, torch.float16)
    actual, expected, _, _ = run_both(batch, gen, 8, TritonAttention(extend_config=SMALL_EXTEND), torch.float16)
    assert_close(actual, expected, torch.float16)


@pytest.mark.skipif(not HAS_CUDA, reason="Triton's CPU interpreter computes tl.dot on bfloat16 wrongly")
@pytest.mark.parametrize("decode", [True, False])
def test_bfloat16(decode):
    if decode:
        batch, gen = decode_batch([3, 40, 21], 2, 64, torch.bfloat16)
    else:
        batch, gen = make_batch([0, 17], [20, 6], 2, 64, torch.bfloat16)
    actual, expected, _, _ = run_both(batch, gen, 8, TritonAttention(num_splits=2), torch.bfloat16)
    assert_close(actual, expected, torch.bfloat16)


# ---- real shapes, GPU only --------------------------------------------------------------------


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_decode_at_model_shapes(dtype, num_splits):
    batch, gen = decode_batch([1, 100, 1000, 2048, 4097, 513, 64, 3000], 8, 128, dtype)
    actual, expected, _, _ = run_both(batch, gen, 32, TritonAttention(num_splits=num_splits), dtype)
    assert_close(actual, expected, dtype)


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_extend_at_model_shapes(dtype):
    batch, gen = make_batch([0, 1000, 64, 2047], [700, 300, 1, 129], 8, 128, dtype)
    actual, expected, _, _ = run_both(batch, gen, 32, TritonAttention(), dtype)
    assert_close(actual, expected, dtype)


@pytest.mark.parametrize("pack_gqa", [False, True])
@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16), (16, 32), (128, 64)])
def test_extend_at_the_edge_of_the_unmasked_tiles(block_m, block_n, pack_gqa):
    """Prefixes around multiples of BLOCK_N put the last key every row of a block sees (prefix +
    block * BLOCK_M) just before, at and after a tile edge: the tiles run without masks end there."""
    prefixes = [block_n - 2, block_n - 1, 2 * block_n - 2, block_n, 0, 2, 31]
    extends = [3, block_m + 1, 2 * block_m + 1, 1, 5, 40, block_m]
    batch, gen = make_batch(prefixes, extends, 2, 16, torch.float32)
    backend = TritonAttention(extend_config=ExtendConfig(block_m=block_m, block_n=block_n, pack_gqa=pack_gqa))
    actual, expected, _, _ = run_both(batch, gen, 4, backend, torch.float32)
    assert_close(actual, expected, torch.float32)


def test_warm_up_runs_the_extend_kernel_in_the_launch_shape_steps_use(monkeypatch):
    from runtime.attention.triton import backend as backend_module
    from runtime.attention.triton.extend import WIDE_HEAD_EXTEND_CONFIG

    seen, run = [], backend_module.extend_attention
    monkeypatch.setattr(backend_module, "extend_attention",
                        lambda *args, config, **kwargs: seen.append(config) or run(*args, config=config, **kwargs))
    layer = AttentionLayer(layer_id=0, num_heads=4, num_kv_heads=2, head_dim=16, scaling=0.25)
    TritonAttention().warm_up(layer, torch.float32, torch.float32, DEVICE)
    assert seen == [ExtendConfig()]
    seen.clear()
    wide = AttentionLayer(layer_id=0, num_heads=2, num_kv_heads=1, head_dim=256, scaling=0.0625)
    TritonAttention().warm_up(wide, torch.float32, torch.float32, DEVICE)
    assert seen == [WIDE_HEAD_EXTEND_CONFIG] and not WIDE_HEAD_EXTEND_CONFIG.pack_gqa  # see extend.py
    seen.clear()
    TritonAttention(extend_config=SMALL_EXTEND).warm_up(layer, torch.float32, torch.float32, DEVICE)
    assert seen == [SMALL_EXTEND]
