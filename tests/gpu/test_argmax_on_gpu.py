"""On a CUDA machine (skipped elsewhere): the chunked argmax that small greedy batches use gives
torch.argmax's tokens over a Llama-3 vocabulary, including ties placed across chunk edges."""

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
