"""On a CUDA machine (skipped elsewhere): our Triton kernels compile once, not again mid-run. A
compile leaves the GPU idle for 0.1–0.4 s; in the offline benchmark one came when the first eager
decode batch of odd size made req_pool_indices (a view B int64s into a packed tensor) lose its
16-byte alignment, which Triton had specialised the kernel on."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"), pytest.mark.gpu]


def _variants(*kernels) -> dict[str, int]:
    # JITFunction.device_caches: device -> (compiled kernels by specialisation key, ...)
    return {k.fn.__name__: sum(len(cache[0]) for cache in k.device_caches.values()) for k in kernels}


def _all_kernels():
    from runtime import argmax, graph_inputs
    from runtime.attention.triton import decode, extend, kv_store
    from runtime.model import fused, gated_matmul, matvec

    return (decode._decode_split_kernel, decode._decode_merge_kernel, extend._extend_kernel, kv_store._store_kv_kernel,
            kv_store._rotary_store_kv_kernel, fused._rms_norm_kernel, fused._silu_mul_kernel, fused._rotary_kernel,
            argmax._chunk_argmax_kernel, argmax._pick_chunk_kernel, graph_inputs._stage_kernel,
            matvec._vector_kernel, matvec._vector_tma_kernel, gated_matmul._silu_mul_matmul_kernel)


def test_index_views_at_any_offset_reuse_the_compiled_kernels():
    from runtime.attention.triton import decode, kv_store
    from runtime.attention.triton.decode import decode_attention_table
    from runtime.attention.triton.kv_store import store_kv

    torch.manual_seed(0)
    slots, kv_heads, heads, dim, row_len = 256, 2, 8, 128, 64
    k_buf = torch.randn(slots, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
    v_buf = torch.randn_like(k_buf)
    table = torch.randint(1, slots, (8, row_len), device="cuda", dtype=torch.int32)
    packed = torch.arange(16, device="cuda", dtype=torch.int64) % 8  # rows at offsets 0 and 1 of one tensor
    seq_lens_packed = torch.randint(1, row_len, (16,), device="cuda", dtype=torch.int32)
    free_list = torch.randperm(slots - 1, device="cuda")[:16] + 1
    results = []
    for offset in (0, 1, 2, 3):
        batch = 5
        rows, seq_lens = packed[offset:offset + batch], seq_lens_packed[offset:offset + batch]
        q = torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16)
        k_new = torch.randn(batch, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
        store_kv(k_buf, v_buf, free_list[offset:offset + batch], k_new, k_new)
        for splits in (1, 3):
            out = decode_attention_table(q, k_buf, v_buf, table.view(-1), rows, row_len, seq_lens, 0.1, splits)
            # the view at an offset computes what a fresh copy does
            ref = decode_attention_table(q, k_buf, v_buf, table.view(-1), rows.clone(), row_len, seq_lens.clone(), 0.1, splits)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
        if offset == 0:
            first = _variants(decode._decode_split_kernel, kv_store._store_kv_kernel)
        results.append(_variants(decode._decode_split_kernel, kv_store._store_kv_kernel))
    assert results[-1] == first, f"new compiled variants for views at other offsets: {first} -> {results[-1]}"


def test_a_warm_engine_compiles_nothing_new_for_other_batch_sizes_and_prompts(tiny_model_dir):
    """Graphs up to batch 4, so larger decode batches run eagerly; the later rounds have other prompt
    lengths, other batch sizes (odd and even), other finishing steps, and a 4k prompt."""
    from tests.integration.engine_helpers import checked_engine

    path = tiny_model_dir("llama", hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=2, intermediate_size=512,
                          max_position_embeddings=8192)
    gen = torch.Generator().manual_seed(0)

    def round_of(n, base_len):
        prompts = [torch.randint(5, 200, (base_len + 7 * i,), generator=gen).tolist() for i in range(n)]
        params = [{"max_new_tokens": 3 + 2 * i, "temperature": 0, "ignore_eos": True} for i in range(n)]
        return prompts, params

    with checked_engine(model_path=path, dtype="bfloat16", device="cuda", cuda_graph_max_bs=4) as engine:
        engine.generate(input_ids=round_of(10, 20)[0], sampling_params=round_of(10, 20)[1])
        warm = _variants(*_all_kernels())
        for n, base in ((9, 33), (13, 5), (7, 61), (1, 4099)):
            prompts, params = round_of(n, base)
            engine.generate(input_ids=prompts, sampling_params=params)
        assert _variants(*_all_kernels()) == warm
