"""A prompt step computes its last layer for the rows the sampler reads only (ForwardBatch.output_rows):
the bookkeeping of which rows those are, and the engine on the default backend (torch_native on the
CPU) giving the full pass's tokens and logprobs with it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from runtime.forward_batch import ForwardMode, build_forward_batch, keep_output_rows
from runtime.step_sampler import needed_rows
from tests.integration.engine_helpers import checked_engine


def _extend_batch(extend_lens: list[int]):
    table = torch.zeros(len(extend_lens), 64, dtype=torch.int32)
    tokens = sum(extend_lens)
    return build_forward_batch(ForwardMode.EXTEND, [1] * tokens, list(range(tokens)), torch.arange(tokens),
                               list(range(len(extend_lens))), [n + 2 for n in extend_lens], table, None,
                               [2] * len(extend_lens), extend_lens)


def test_kept_rows_are_each_requests_last_tokens_in_step_order():
    batch = _extend_batch([3, 1, 4, 2])
    keep_output_rows(batch, [1, 0, 4, 2])
    assert batch.output_rows.tolist() == [2, 4, 5, 6, 7, 8, 9]
    assert batch.output_lens_cpu.tolist() == [1, 0, 4, 2]
    everything = _extend_batch([3, 1])
    keep_output_rows(everything, [3, 1])  # every row: nothing to skip, the model runs as before
    assert everything.output_rows is None and everything.output_lens_cpu is None
    with pytest.raises(AssertionError):
        keep_output_rows(_extend_batch([3]), [4])


@pytest.mark.parametrize("scores_prompt,last_chunk,extend_len,rows", [
    (True, False, 5, 5),   # prompt logprobs: every row of every chunk
    (True, True, 5, 5),
    (False, True, 5, 1),   # the prompt ends here: its last token's logits
    (False, False, 5, 0),  # mid-prompt: nothing is read
])
def test_needed_rows(scores_prompt, last_chunk, extend_len, rows):
    admission = SimpleNamespace(req=SimpleNamespace(wants_prompt_logprobs=scores_prompt), is_last_chunk=last_chunk)
    assert needed_rows(admission, extend_len) == rows


def test_engine_gives_the_full_pass_tokens_and_logprobs_on_the_default_backend(tiny_model_dir):
    path = tiny_model_dir("llama")
    prompts = [list(range(5, 40)), list(range(50, 58)), list(range(60, 83))]
    params = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
    runs = {True: [], False: []}
    for full_pass in (True, False):
        for chunk, scored in ((9, [False, True, True]), (8192, [False, False, False])):
            # chunked with two prompts scoring theirs; then all three prompts ending in one step
            with checked_engine(model_path=path, dtype="float32", chunked_prefill_size=chunk,
                                disable_output_rows_only=full_pass) as engine:
                runs[full_pass] += engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True,
                                                   logprob_start_len=[-1 if not s else 3 * i for i, s in enumerate(scored)],
                                                   top_logprobs_num=2)
    for full, pruned in zip(runs[True], runs[False]):
        assert full["output_ids"] == pruned["output_ids"]
        for key in ("input_token_logprobs", "output_token_logprobs"):
            a, b = full["meta_info"].get(key), pruned["meta_info"].get(key)
            assert (a is None) == (b is None)
            if a is not None:
                assert [t for _, t, _ in a] == [t for _, t, _ in b]
                assert [lp for lp, _, _ in a if lp is not None] == pytest.approx(
                    [lp for lp, _, _ in b if lp is not None], abs=1e-5)
