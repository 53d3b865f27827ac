"""The FlashInfer backend sizes its float workspace for graph-mode decode plans (FlashInfer raises a
buffer overflow at capture time when the workspace is too small for the largest captured batch)."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # NOTE: before triton is imported (the backend module imports our kernels)

from runtime.attention.base import AttentionLayer  # noqa: E402
from runtime.attention.flashinfer import _WORKSPACE_BYTES, graph_workspace_bytes  # noqa: E402


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
