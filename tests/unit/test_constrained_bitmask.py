"""Packed bitmask helpers: the vectorised CPU path and the Triton kernel (interpreted on CPU) against
a per-element reference."""

import pytest
import torch

from tests.interpreted_triton import use_interpreter_for

# NOTE: before triton_bitmask is first imported (the interpreter is chosen at decoration)
HAS_CUDA = not use_interpreter_for("runtime.constrained.triton_bitmask")

from runtime.constrained.bitmask import allocate_token_bitmask, apply_token_bitmask_, unpack_bitmask  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


def reference(logits, bitmask, rows):
    out = logits.clone()
    for r in range(logits.shape[0]) if rows is None else rows.tolist():
        for t in range(logits.shape[1]):
            word = t // 32
            allowed = word < bitmask.shape[1] and (int(bitmask[r, word]) >> (t % 32)) & 1
            if not allowed:
                out[r, t] = float("-inf")
    return out


def random_case(batch, vocab, words, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, words), generator=gen, dtype=torch.int64).to(torch.int32)
    return logits, bitmask


def test_allocate_allows_every_token():
    bitmask = allocate_token_bitmask(2, 70)
    assert bitmask.shape == (2, 3) and bitmask.dtype == torch.int32
    assert unpack_bitmask(bitmask, 70).all()


@pytest.mark.parametrize("vocab, words", [(64, 2), (70, 3), (100, 2)])  # exact, ragged, logits wider
@pytest.mark.parametrize("use_rows", [False, True])
def test_cpu_apply_matches_reference(vocab, words, use_rows):
    logits, bitmask = random_case(4, vocab, words, seed=vocab + words)
    rows = torch.tensor([0, 2]) if use_rows else None
    expected = reference(logits, bitmask, rows)
    apply_token_bitmask_(logits, bitmask, rows)
    assert torch.equal(logits, expected)


def test_bit_31_and_negative_words_unpack_correctly():
    bitmask = torch.tensor([[-(2**31)]], dtype=torch.int32)  # only bit 31 set
    assert unpack_bitmask(bitmask, 32)[0].nonzero().flatten().tolist() == [31]


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        apply_token_bitmask_(torch.zeros(2, 10), torch.zeros(3, 1, dtype=torch.int32))
    with pytest.raises(ValueError):
        apply_token_bitmask_(torch.zeros(2, 10), torch.zeros(2, 1, dtype=torch.int64))


@pytest.mark.parametrize("vocab, words", [(64, 2), (70, 3), (2100, 40)])
@pytest.mark.parametrize("use_rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_matches_reference(vocab, words, use_rows, dtype):
    pytest.importorskip("triton")
    from runtime.constrained.triton_bitmask import apply_token_bitmask_triton_

    logits, bitmask = random_case(3, vocab, words, seed=vocab * 7 + words)
    logits = logits.to(dtype)
    rows = torch.tensor([2, 0]) if use_rows else None
    expected = reference(logits.float(), bitmask, rows).to(dtype)
    logits, bitmask = logits.to(DEVICE), bitmask.to(DEVICE)
    apply_token_bitmask_triton_(logits, bitmask, None if rows is None else rows.to(DEVICE))
    assert torch.equal(logits.cpu(), expected)
