"""The chunked argmax behind greedy decoding on the GPU (runtime/argmax.py), under TRITON_INTERPRET=1:
torch.argmax's answer, ties to the first index, across chunk edges."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.interpreted_triton import use_interpreter_for  # noqa: E402

use_interpreter_for("runtime.argmax")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from runtime.argmax import chunked_argmax  # noqa: E402
from runtime.sampler import argmax_rows  # noqa: E402


@pytest.mark.parametrize("rows, cols, chunk", [(1, 100, 16), (3, 4099, 64), (2, 7, 16), (1, 1, 16), (4, 256, 256)])
def test_chunked_argmax_is_torchs(rows, cols, chunk):
    logits = torch.randn(rows, cols, generator=torch.Generator().manual_seed(cols))
    assert torch.equal(chunked_argmax(logits, chunk=chunk), torch.argmax(logits, dim=-1))


def test_ties_go_to_the_first_index_within_and_across_chunks():
    logits = torch.zeros(4, 64)
    logits[0, [5, 9]] = 3.0  # one chunk of 16
    logits[1, [20, 40, 60]] = 3.0  # three chunks
    logits[2, [47, 48]] = 3.0  # either side of a chunk edge
    logits[3] = float("-inf")  # nothing to choose: torch says 0
    assert chunked_argmax(logits, chunk=16).tolist() == [5, 20, 47, 0] == torch.argmax(logits, dim=-1).tolist()


def test_nan_ranks_above_inf_and_signed_zeros_tie_as_in_torch():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1))
    logits[0, 33] = float("nan")
    logits[1, [3, 30]] = float("inf")
    logits[2, 3], logits[2, 30] = float("inf"), float("nan")  # a NaN after a +inf still wins
    logits[3] = -1.0
    logits[3, [7, 20]] = torch.tensor([-0.0, 0.0])  # equal: the first
    logits[4] = float("-inf")
    logits[4, 40] = -3e38  # the only finite value, in the last chunk
    want = torch.argmax(logits, dim=-1).tolist()
    assert chunked_argmax(logits, chunk=16).tolist() == [33, 3, 30, 7, 40] == want


def test_rows_on_the_cpu_take_torchs_argmax():
    logits = torch.randn(3, 10)
    assert torch.equal(argmax_rows(logits), torch.argmax(logits, dim=-1))
    assert argmax_rows(torch.empty(0, 10)).shape == (0,)
