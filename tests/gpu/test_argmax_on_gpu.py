"""On a CUDA machine (skipped elsewhere): the chunked argmax that small greedy batches use gives
torch.argmax's tokens over a Llama-3 vocabulary, ties across chunk edges and special values included."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_chunked_argmax_is_torchs_on_the_gpu(rows):
    from runtime.argmax import CHUNK, chunked_argmax
    from runtime.sampler import argmax_rows

    gen = torch.Generator(device="cuda").manual_seed(rows)
    logits = torch.randn(rows, 128256, device="cuda", generator=gen) * 4
    logits[0, [CHUNK - 1, CHUNK, 5 * CHUNK]] = 100.0  # a tie across a chunk edge: the first wins
    assert torch.equal(chunked_argmax(logits), torch.argmax(logits, dim=-1))
    assert torch.equal(argmax_rows(logits), torch.argmax(logits, dim=-1))
    assert chunked_argmax(logits)[0].item() == CHUNK - 1


def test_special_values_rank_as_in_torch_on_the_gpu():
    """The compiled tie-breaking (the interpreter takes numpy's argmax instead): NaN above +inf,
    -0.0 equal to +0.0, all -inf rows, ties in a chunk and across chunks."""
    from runtime.argmax import CHUNK, chunked_argmax

    logits = torch.full((6, 128256), -1.0, device="cuda")
    logits[0, [100, 9 * CHUNK]] = torch.tensor([float("inf"), float("nan")], device="cuda")
    logits[1, [5, 6]] = torch.tensor([-0.0, 0.0], device="cuda")
    logits[2] = float("-inf")
    logits[3, [CHUNK + 7, CHUNK + 9, 3 * CHUNK]] = 2.0
    logits[4, -1] = 5.0  # the last column of a partial chunk
    logits[5, [17, 77]] = float("nan")
    want = torch.argmax(logits, dim=-1)
    assert chunked_argmax(logits).tolist() == want.tolist() == [9 * CHUNK, 5, 0, CHUNK + 7, 128255, 17]
