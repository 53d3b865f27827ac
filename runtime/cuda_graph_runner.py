"""CUDA graphs for decode: capture the whole decode forward (+ logits) once per batch size at start-up,
then replay with new inputs copied into static buffers. Removes per-kernel launch cost, which
dominates small-batch decode.

Padding: a batch of b requests replays the graph captured for the next size B >= b. Rows b..B-1:

    | real rows 0..b-1 (copied in)      | padding rows b..B-1                                   |
    | input id, position, slot, row, len| id 0, position 0, slot 0 (the padding slot), pad_row, len 1 |

`pad_row` is a request-table row reserved here whose first entry is slot 0, so padding rows attend
to one harmless key and write their K/V into slot 0, which no request ever owns.
"""

from __future__ import annotations

import bisect
import logging

import torch

from runtime.forward_batch import ForwardBatch, ForwardMode
from runtime.graph_inputs import stage_decode_inputs

logger = logging.getLogger(__name__)


def capture_batch_sizes(max_bs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 1025, 32))
    return sorted({s for s in sizes if s <= max_bs} | {max_bs})


class CudaGraphRunner:
    def __init__(self, runner, max_bs: int):
        self.runner = runner
        self.model = runner.model
        self.attn = runner.attn_backend
        self.device = runner.device
        self.batch_sizes = capture_batch_sizes(max_bs)
        self.max_bs = self.batch_sizes[-1]
        pool = runner.req_to_token_pool
        self.pad_row = pool.reserve()
        pool.req_to_token[self.pad_row].zero_()
        dev = self.device
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.out_cache_loc = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.req_pool_indices = torch.full((self.max_bs,), self.pad_row, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(self.max_bs, dtype=torch.int32, device=dev)
        self.static_inputs = dict(input_ids=self.input_ids, positions=self.positions, out_cache_loc=self.out_cache_loc,
                                  req_pool_indices=self.req_pool_indices, seq_lens=self.seq_lens)
        # compile the staging kernel now, not at the first step: no requests, every row padding
        empty = [self.static_inputs[name][:0] for name in ("input_ids", "positions", "out_cache_loc", "req_pool_indices",
                                                           "seq_lens")]
        stage_decode_inputs(*empty, self.static_inputs, pool.req_to_token, self.max_bs, self.pad_row)
        self.logits = torch.zeros(self.max_bs, runner.vocab_size, dtype=torch.float32, device=dev)
        self.attn.init_cuda_graph_state(self.max_bs, runner.context_len + 1, dev, self.model.attention_layer, runner.dtype)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.memory_pool = None
        self._capture_all()

    def _static_batch(self, bs: int, seq_lens_cpu: torch.Tensor) -> ForwardBatch:
        return ForwardBatch(
            mode=ForwardMode.DECODE,
            batch_size=bs,
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            req_to_token=self.runner.req_to_token_pool.req_to_token,
            kv_pool=self.runner.kv_pool,
            seq_lens_cpu=seq_lens_cpu,
        )

    def _run_static(self, bs: int, batch: ForwardBatch) -> None:
        hidden = self.model(batch.input_ids, batch.positions, batch)
        self.model.compute_logits(hidden, out=self.logits[:bs])

    @torch.inference_mode()
    def _capture_all(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        # largest first: smaller graphs then reuse the same memory pool
        for bs in reversed(self.batch_sizes):
            batch = self._static_batch(bs, torch.ones(bs, dtype=torch.int64))
            with torch.cuda.stream(stream):
                # on the capture stream, so the metadata copies are ordered before the warm-up reads
                self.attn.prepare_cuda_graph_decode(batch)
                for _ in range(2):  # warm up: Triton compiles, allocator settles
                    self._run_static(bs, batch)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.memory_pool, stream=stream):
                self._run_static(bs, batch)
            if self.memory_pool is None:
                self.memory_pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        logger.info("captured decode CUDA graphs for batch sizes %s", self.batch_sizes)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.is_decode and batch.batch_size <= self.max_bs

    def _stage(self, batch: ForwardBatch, bs: int) -> None:
        stage_decode_inputs(batch.input_ids, batch.positions, batch.out_cache_loc, batch.req_pool_indices,
                            batch.seq_lens, self.static_inputs, batch.req_to_token, bs, self.pad_row)

    @torch.inference_mode()
    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """logits [b, vocab] float32 for a decode batch of b requests, whose new KV slots this also
        writes into the slot table (ModelRunner.decode)."""
        b = batch.batch_size
        bs = self.batch_sizes[bisect.bisect_left(self.batch_sizes, b)]
        self._stage(batch, bs)
        seq_lens_cpu = torch.ones(bs, dtype=torch.int64)
        seq_lens_cpu[:b] = batch.seq_lens_cpu
        self.attn.prepare_cuda_graph_decode(self._static_batch(bs, seq_lens_cpu))
        self.graphs[bs].replay()
        return self.logits[:b]
