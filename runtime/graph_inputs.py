"""One kernel that stages a decode step for a CUDA-graph replay: it copies the step's inputs into
the graph's static buffers, fills the padding rows, and writes each request's new KV slot into the
slot table (req_to_token[row, position] = slot).

Done with torch, that was ~8 small operations between two replays (five copies, a dtype cast, the
scatter and its index cast), each a launch the GPU runs one after another while the graph waits; at
batch 1 the whole step is ~4 ms, so each of them is worth removing.

Padding rows (b..bs-1) read: id 0, position 0, slot 0, row `pad_row`, length 1 (cuda_graph_runner.py
says why that is harmless). They write nothing into the slot table.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256


# The sources are views at any offset into the step's packed host→device tensor, and b, bs vary
# every step: specialising on either would compile new variants mid-run.
@triton.jit(
    do_not_specialize=["b", "bs", "pad_row", "table_stride"],
    do_not_specialize_on_alignment=["ids_ptr", "positions_ptr", "slots_ptr", "rows_ptr", "seq_lens_ptr"],
)
def _stage_kernel(
    ids_ptr, positions_ptr, slots_ptr, rows_ptr, seq_lens_ptr,
    static_ids_ptr, static_positions_ptr, static_slots_ptr, static_rows_ptr, static_seq_lens_ptr,
    table_ptr, table_stride, b, bs, pad_row, BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    real = i < b
    staged = i < bs
    ids = tl.load(ids_ptr + i, mask=real, other=0)
    positions = tl.load(positions_ptr + i, mask=real, other=0)
    slots = tl.load(slots_ptr + i, mask=real, other=0)
    rows = tl.load(rows_ptr + i, mask=real, other=pad_row)
    seq_lens = tl.load(seq_lens_ptr + i, mask=real, other=1)
    tl.store(static_ids_ptr + i, ids, mask=staged)
    tl.store(static_positions_ptr + i, positions, mask=staged)
    tl.store(static_slots_ptr + i, slots, mask=staged)
    tl.store(static_rows_ptr + i, rows, mask=staged)
    tl.store(static_seq_lens_ptr + i, seq_lens.to(tl.int32), mask=staged)
    tl.store(table_ptr + rows.to(tl.int64) * table_stride + positions, slots.to(tl.int32), mask=real)


def stage_decode_inputs(
    input_ids: torch.Tensor, positions: torch.Tensor, out_cache_loc: torch.Tensor,
    req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, static: dict[str, torch.Tensor],
    req_to_token: torch.Tensor, bs: int, pad_row: int,
) -> None:
    """Rows 0..b-1 of the static buffers (`static`: input_ids, positions, out_cache_loc,
    req_pool_indices int64 and seq_lens int32, each of at least bs rows) from the step's b requests,
    rows b..bs-1 as padding, and req_to_token[req_pool_indices[i], positions[i]] = out_cache_loc[i]."""
    b = input_ids.shape[0]
    sources = (input_ids, positions, out_cache_loc, req_pool_indices, seq_lens)
    if any(t.shape[0] != b or t.stride(0) != 1 for t in sources):
        raise ValueError("stage_decode_inputs takes five contiguous tensors of one length")
    if not b <= bs <= static["input_ids"].shape[0]:
        raise ValueError(f"stage_decode_inputs: {b} requests for a graph of {bs} rows "
                         f"(buffers of {static['input_ids'].shape[0]})")
    assert req_to_token.dtype == torch.int32 and req_to_token.stride(1) == 1
    # NOTE: never with PDL. Decode attention reads the slot table, rows and lengths before its own
    # PDL wait (decode.py), which is safe only because this kernel finishes before the graph starts.
    _stage_kernel[(triton.cdiv(bs, BLOCK),)](
        *sources,
        static["input_ids"], static["positions"], static["out_cache_loc"], static["req_pool_indices"],
        static["seq_lens"], req_to_token, req_to_token.stride(0), b, bs, pad_row, BLOCK=BLOCK,
    )
