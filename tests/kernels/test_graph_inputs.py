"""The kernel that stages a decode step for a CUDA-graph replay (runtime/graph_inputs.py), under
TRITON_INTERPRET=1, against what the torch copies, fills and scatter it replaces would leave."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.interpreted_triton import use_interpreter_for  # noqa: E402

use_interpreter_for("runtime.graph_inputs")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from runtime.graph_inputs import stage_decode_inputs  # noqa: E402

MAX_BS, PAD_ROW = 300, 7


def _static():
    return dict(
        input_ids=torch.full((MAX_BS,), -5, dtype=torch.int64), positions=torch.full((MAX_BS,), -5, dtype=torch.int64),
        out_cache_loc=torch.full((MAX_BS,), -5, dtype=torch.int64),
        req_pool_indices=torch.full((MAX_BS,), -5, dtype=torch.int64), seq_lens=torch.full((MAX_BS,), -5, dtype=torch.int32))


def _step(b: int, offset: int, seed: int):
    """A decode step as build_forward_batch lays it out: views `offset` int64s into one packed tensor."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(PAD_ROW, generator=gen)[:b] if b <= PAD_ROW else torch.arange(b) + PAD_ROW + 1
    positions = torch.randint(0, 50, (b,), generator=gen)
    packed = torch.cat([torch.zeros(offset, dtype=torch.int64), torch.randint(0, 1000, (b,), generator=gen), positions,
                        rows, positions + 1, torch.randint(1, 5000, (b,), generator=gen)])
    ids, positions, rows, seq_lens, slots = packed[offset:].view(5, b)
    return ids, positions, slots, rows, seq_lens.to(torch.int32)


@pytest.mark.parametrize("b, bs, offset", [(1, 1, 0), (3, 4, 1), (5, 8, 3), (260, 288, 2), (0, 16, 0)])
def test_staging_equals_the_torch_copies_fills_and_scatter(b, bs, offset):
    ids, positions, slots, rows, seq_lens = _step(b, offset, seed=b + bs)
    table = torch.randint(0, 99, (PAD_ROW + 300, 64), dtype=torch.int32)
    want_table = table.clone()
    want_table[rows, positions] = slots.to(torch.int32)
    static = _static()
    stage_decode_inputs(ids, positions, slots, rows, seq_lens, static, table, bs, PAD_ROW)
    pad = bs - b
    expected = dict(input_ids=(ids, 0), positions=(positions, 0), out_cache_loc=(slots, 0),
                    req_pool_indices=(rows, PAD_ROW), seq_lens=(seq_lens, 1))
    for name, (values, pad_value) in expected.items():
        got = static[name]
        assert torch.equal(got[:b], values.to(got.dtype)), name
        assert (got[b:bs] == pad_value).all() and len(got[b:bs]) == pad, name
        assert (got[bs:] == -5).all(), f"{name}: rows past the graph's size are left alone"
    assert torch.equal(table, want_table)  # every new slot at its row and position; padding writes nothing


def test_mismatched_or_oversized_steps_are_refused():
    ids, positions, slots, rows, seq_lens = _step(4, 0, seed=0)
    table = torch.zeros(PAD_ROW + 1, 64, dtype=torch.int32)
    with pytest.raises(ValueError, match="one length"):
        stage_decode_inputs(ids[:3], positions, slots, rows, seq_lens, _static(), table, 4, PAD_ROW)
    with pytest.raises(ValueError, match="4 requests for a graph of 2 rows"):
        stage_decode_inputs(ids, positions, slots, rows, seq_lens, _static(), table, 2, PAD_ROW)
    with pytest.raises(ValueError, match="buffers of 300"):
        stage_decode_inputs(ids, positions, slots, rows, seq_lens, _static(), table, MAX_BS + 1, PAD_ROW)


def test_graph_replay_stages_the_batch_then_replays_the_graph_of_the_next_size():
    """CudaGraphRunner.replay's glue, on the CPU with a stand-in graph: the batch's rows land in the
    static buffers, padding up to the captured size, its slots in the table, and then that size's
    graph replays (capture itself needs CUDA)."""
    from runtime.cuda_graph_runner import CudaGraphRunner
    from runtime.forward_batch import ForwardBatch, ForwardMode

    replayed = []

    class FakeGraph:
        def __init__(self, bs):
            self.bs = bs

        def replay(self):
            replayed.append(self.bs)

    class FakeAttention:
        def prepare_cuda_graph_decode(self, batch):
            assert batch.batch_size == 4 and batch.seq_lens_cpu.tolist()[:3] == seq_lens.tolist()

    runner = object.__new__(CudaGraphRunner)  # no capture: the attributes replay reads
    runner.batch_sizes, runner.max_bs, runner.pad_row = [1, 2, 4, 8], 8, PAD_ROW
    static = _static()
    runner.input_ids, runner.positions, runner.out_cache_loc = static["input_ids"], static["positions"], static["out_cache_loc"]
    runner.req_pool_indices, runner.seq_lens = static["req_pool_indices"], static["seq_lens"]
    runner.static_inputs = static
    runner.attn, runner.graphs = FakeAttention(), {bs: FakeGraph(bs) for bs in runner.batch_sizes}
    runner.logits = torch.arange(8 * 5, dtype=torch.float32).view(8, 5)
    ids, positions, slots, rows, seq_lens = _step(3, 1, seed=9)
    table = torch.zeros(PAD_ROW + 1, 64, dtype=torch.int32)
    table_pool = type("Pool", (), {"req_to_token": table})()
    runner.runner = type("Runner", (), {"req_to_token_pool": table_pool, "kv_pool": None})()
    batch = ForwardBatch(mode=ForwardMode.DECODE, batch_size=3, input_ids=ids, positions=positions,
                         req_pool_indices=rows, seq_lens=seq_lens, out_cache_loc=slots, req_to_token=table,
                         kv_pool=None, seq_lens_cpu=seq_lens.to(torch.int64))
    logits = runner.replay(batch)
    assert replayed == [4] and torch.equal(logits, runner.logits[:3])
    assert torch.equal(static["out_cache_loc"][:4], torch.cat([slots, torch.zeros(1, dtype=torch.int64)]))
    assert static["req_pool_indices"][3] == PAD_ROW and static["seq_lens"][3] == 1
    assert torch.equal(table[rows, positions], slots.to(torch.int32))
