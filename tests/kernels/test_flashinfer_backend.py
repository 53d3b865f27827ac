"""The FlashInfer backend's bookkeeping, on the CPU: the float workspace sized for graph-mode decode
plans (FlashInfer raises a buffer overflow at capture time when it is too small), and which wrapper
plans what, when, with a stand-in `flashinfer` module (its kernels run on the GPU, in tests/gpu)."""

from __future__ import annotations

import os
import sys
import types

os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton is imported (the backend module imports our kernels)

import pytest  # noqa: E402
import torch  # noqa: E402

from runtime.attention.base import AttentionLayer  # noqa: E402
from runtime.attention.flashinfer import _WORKSPACE_BYTES, FlashInferAttention, graph_workspace_bytes  # noqa: E402
from runtime.cache.pool import KVPool  # noqa: E402
from runtime.forward_batch import ForwardMode, build_forward_batch  # noqa: E402


def test_the_8b_shape_fits_the_default_workspace_and_64_heads_do_not():
    llama_8b = AttentionLayer(0, num_heads=32, num_kv_heads=8, head_dim=128, scaling=1.0)
    # group 4 → 16-row query tiles: ceil(512 * 4 / 16) + 511 = 639 tiles of 16 rows, 129 floats each
    assert graph_workspace_bytes(512, llama_8b) == 32 * 639 * 16 * 129 * 4 + 16 * 2**20
    assert graph_workspace_bytes(512, llama_8b) < _WORKSPACE_BYTES
    wide = AttentionLayer(0, num_heads=64, num_kv_heads=8, head_dim=128, scaling=1.0)
    assert graph_workspace_bytes(512, wide) > _WORKSPACE_BYTES  # so init_cuda_graph_state enlarges it


def test_the_need_grows_with_the_batch_and_the_query_tile():
    layer = AttentionLayer(0, num_heads=32, num_kv_heads=1, head_dim=128, scaling=1.0)  # group 32 → 64-row tiles
    assert graph_workspace_bytes(1, layer) < graph_workspace_bytes(256, layer) < graph_workspace_bytes(1024, layer)
    assert graph_workspace_bytes(8, layer) == 32 * (-(-8 * 32 // 64) + 7) * 64 * 129 * 4 + 16 * 2**20


class _Wrapper:
    """Records what the backend asks of a FlashInfer wrapper."""

    def __init__(self, workspace, layout, use_cuda_graph=False, use_tensor_cores=False, paged_kv_indptr_buffer=None,
                 paged_kv_indices_buffer=None, paged_kv_last_page_len_buffer=None):
        self.graph = use_cuda_graph
        self.indptr_buffer, self.last_page_len_buffer = paged_kv_indptr_buffer, paged_kv_last_page_len_buffer
        self.plans, self.runs = [], 0

    def plan(self, *args, **kwargs):
        self.plans.append(args)

    def run(self, q, paged):
        self.runs += 1
        return torch.zeros_like(q)


class _Event:
    waited = 0

    def record(self):
        pass

    def synchronize(self):
        _Event.waited += 1


@pytest.fixture
def backend(monkeypatch):
    fake = types.SimpleNamespace(BatchDecodeWithPagedKVCacheWrapper=_Wrapper, BatchPrefillWithPagedKVCacheWrapper=_Wrapper)
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr("runtime.attention.flashinfer._WORKSPACE_BYTES", 1024)  # no 256 MiB on the test box
    _Event.waited = 0
    return FlashInferAttention(device="cpu")


LAYER = AttentionLayer(0, num_heads=4, num_kv_heads=2, head_dim=16, scaling=0.25)


def _decode_batch(pool, table, seq_lens):
    rows = list(range(len(seq_lens)))
    return build_forward_batch(ForwardMode.DECODE, [1] * len(rows), [n - 1 for n in seq_lens],
                               torch.arange(len(rows)) + 1, rows, seq_lens, table, pool)


def test_graph_steps_plan_their_batch_size_wrapper_before_the_replay_and_eager_steps_their_own(backend):
    pool = KVPool(64, 1, 2, 16, torch.float32, "cpu")
    table = torch.arange(4 * 16, dtype=torch.int32).view(4, 16) + 1  # request r's slots: 16r+1, 16r+2, ...
    backend.init_cuda_graph_state(4, 16, torch.device("cpu"), LAYER, torch.float16)
    assert backend.workspace.numel() == graph_workspace_bytes(4, LAYER)  # grown past the (patched) default
    assert backend.prefill_wrapper is not None and backend.eager_decode_wrapper is backend.decode_wrapper
    batch = _decode_batch(pool, table, [3, 1, 5, 2])
    backend.prepare_cuda_graph_decode(batch)
    wrapper = backend.decode_wrapper
    assert wrapper.graph and len(wrapper.indptr_buffer) == 5 and len(wrapper.last_page_len_buffer) == 4
    (indptr, indices, last_page_len, heads, kv_heads, head_dim, page_size), = wrapper.plans  # planned before any layer
    assert indptr.device.type == "cpu" and indptr.tolist() == [0, 3, 4, 9, 11]  # host lengths: no device sync
    assert indices.tolist() == [1, 2, 3, 17, 33, 34, 35, 36, 37, 49, 50]
    assert (heads, kv_heads, head_dim, page_size, last_page_len.tolist()) == (4, 2, 16, 1, [1, 1, 1, 1])
    q, kv = torch.zeros(4, 4, 16), torch.zeros(4, 2, 16)
    backend.forward_decode(q, kv, kv, LAYER, batch)  # inside a graph: runs, never re-plans
    assert len(wrapper.plans) == 1 and wrapper.runs == 1

    backend.prepare_cuda_graph_decode(_decode_batch(pool, table, [4, 2, 6, 3]))  # the next step, same size
    assert backend.decode_wrapper is wrapper and len(wrapper.plans) == 2
    assert _Event.waited == 1  # the previous plan's copy left the staging buffer first

    backend.prepare(_decode_batch(pool, table, [5, 3]))  # a batch run eagerly
    eager = backend.decode_wrapper
    assert eager is backend.eager_decode_wrapper and not eager.graph and not eager.plans
    backend.forward_decode(q[:2], kv[:2], kv[:2], LAYER, _decode_batch(pool, table, [5, 3]))
    assert len(eager.plans) == 1 and eager.runs == 1 and len(wrapper.plans) == 2
