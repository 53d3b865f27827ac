"""On a CUDA machine (skipped elsewhere): the last split of each request and KV head merges the
splits (decode.py's arrival counters) with the bits of the merge kernel, at the Llama-3-8B head
shape, launch after launch and inside a CUDA graph. The programs of one launch really run at once
here, so a count that let a split merge before the others had stored their parts would show."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]

HEADS, KV_HEADS, DIM = 32, 8, 128


def _decode_inputs(batch: int, max_len: int, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    seq_lens = torch.randint(1, max_len + 1, (batch,), device="cuda", generator=gen).to(torch.int32)
    seq_lens[0] = max_len
    slots = int(seq_lens.sum()) + 1
    k, v = (torch.randn(slots, KV_HEADS, DIM, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2))
    table = torch.randperm(slots - 1, device="cuda", generator=gen).to(torch.int32) + 1
    rows = torch.cumsum(seq_lens, 0) - seq_lens
    q = torch.randn(batch, HEADS, DIM, device="cuda", generator=gen).to(torch.bfloat16)
    return q, k, v, table, rows.to(torch.int64), seq_lens


@pytest.mark.parametrize("batch,max_len", [(1, 1024), (1, 4096), (3, 2000), (8, 700)])
def test_merging_in_the_last_split_equals_the_merge_kernel_every_launch(batch, max_len):
    from runtime.attention.triton.decode import decode_attention_table, merge_workspace
    from runtime.attention.triton.splits import choose_num_splits

    q, k, v, table, rows, seq_lens = _decode_inputs(batch, max_len, seed=batch * max_len)
    splits = choose_num_splits(batch, KV_HEADS, max_len, torch.cuda.get_device_properties(0).multi_processor_count)
    assert splits > 1
    args = (q, k, v, table, rows, 1, seq_lens, DIM**-0.5, splits)
    want = decode_attention_table(*args)
    counters = merge_workspace(batch, KV_HEADS, q.device)
    outs = [decode_attention_table(*args, arrivals=counters) for _ in range(50)]
    assert all(torch.equal(out, want) for out in outs)
    assert torch.count_nonzero(counters) == 0


def test_merging_in_the_last_split_inside_a_cuda_graph():
    from runtime.attention.triton.decode import decode_attention_table, merge_workspace

    q, k, v, table, rows, seq_lens = _decode_inputs(2, 1500, seed=7)
    args = (q, k, v, table, rows, 1, seq_lens, DIM**-0.5, 16)
    counters = merge_workspace(2, KV_HEADS, q.device)
    out = torch.empty_like(q)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decode_attention_table(*args, out=out, arrivals=counters)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention_table(*args, out=out, arrivals=counters)
    for length in (1500, 900, 64, 1):  # the graph reads the live lengths
        seq_lens[0] = length
        graph.replay()
        assert torch.equal(out, decode_attention_table(*args))
    assert torch.count_nonzero(counters) == 0
