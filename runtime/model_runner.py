"""Owns the model, the KV memory and the attention backend; runs one forward pass per step."""

from __future__ import annotations

import logging

import torch

from runtime.attention.base import create_attention_backend
from runtime.cache.pool import KVPool, ReqToTokenPool, TokenSlotAllocator
from runtime.config import EngineConfig
from runtime.forward_batch import ForwardBatch
from runtime.model.config import ModelConfig
from runtime.model.loader import load_model, resolve_dtype
from runtime.triton_interpreter import can_launch_on

logger = logging.getLogger(__name__)

# Rows beyond max_running_requests: the chunked request and a retracted one being re-admitted.
_SPARE_ROWS = 4


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available")
    return torch.device(device)


KV_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def resolve_kv_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV pool's storage dtype for the kv_cache_dtype option."""
    if name == "auto":
        return model_dtype
    if name not in KV_DTYPES:
        raise ValueError(f"kv_cache_dtype must be 'auto' or one of {list(KV_DTYPES)}, got {name!r}")
    return KV_DTYPES[name]


def _check_fp8(dtype: torch.dtype, device: torch.device, source: str) -> None:
    from runtime.model.fp8 import check_supported

    if dtype != torch.bfloat16:
        raise ValueError(f"{source} needs dtype bfloat16, the model runs in {dtype}")
    check_supported(device)


def _check_deterministic(config: EngineConfig, backend: str, device: torch.device, fp8_checkpoint: bool) -> None:
    """deterministic_inference runs our batch-invariant Triton kernels: refuse what cannot."""
    if backend != "triton":
        raise ValueError(f"deterministic_inference needs attention_backend='triton' (batch-invariant kernels), got "
                         f"{backend!r}" + (" (on a CPU also set TRITON_INTERPRET=1)" if device.type == "cpu" else ""))
    if not can_launch_on(device):
        raise ValueError("deterministic_inference runs Triton kernels: on a CPU set TRITON_INTERPRET=1")
    if config.quantization is not None or fp8_checkpoint:
        raise ValueError("deterministic_inference takes unquantized weights, not quantization='fp8' or an fp8 checkpoint")
    if device.type == "cuda":
        from runtime.model.layers import fused_kernels

        if fused_kernels(torch.zeros(1, device=device)) is None:
            # torch's norm reduction splits a row by the batch's shape: only our row kernels are invariant
            raise ValueError("deterministic_inference needs our Triton norm kernels, which are off here "
                             "(SGFLOW_DISABLE_FUSED=1, or their start-up check failed: see the log)")


def auto_max_running_requests(pool_tokens: int) -> int:
    """As many requests as the pool holds at 512 tokens each, within [16, 1024]. On an H100 with an
    8B model (~420k KV tokens) that is 824: the offline benchmark ran 11% faster with 512 running
    than 256 (each decode step's weight reads shared by more tokens), and the pool, not this cap,
    then limits the batch."""
    return max(16, min(1024, pool_tokens // 512))


def resolve_attention_backend(name: str, device: torch.device) -> str:
    if name != "auto":
        if name in ("triton", "flashinfer") and device.type != "cuda":
            # Triton runs on CPU only under TRITON_INTERPRET=1 (tests); FlashInfer never does.
            import os

            if name == "flashinfer" or os.environ.get("TRITON_INTERPRET") != "1":
                raise ValueError(f"attention_backend={name!r} needs a CUDA device")
        return name
    if device.type != "cuda":
        return "torch_native"
    # Our Triton decode kernel measured faster than FlashInfer's at every benchmarked shape (H100 and
    # H200, benchmarks/RESULTS.md) and supports CUDA graphs here, so it is the GPU default.
    return "triton"


class ModelRunner:
    def __init__(self, config: EngineConfig, model_path: str):
        self.config = config
        self.device = resolve_device(config.device)
        self.attention_backend_name = resolve_attention_backend(config.attention_backend, self.device)
        self.attn_backend = create_attention_backend(self.attention_backend_name, device=self.device,
                                                     deterministic=config.deterministic_inference)
        checkpoint = ModelConfig.from_pretrained(model_path)
        fp8_checkpoint = checkpoint.has_fp8_layers and config.load_format != "dummy"
        if config.deterministic_inference:
            _check_deterministic(config, self.attention_backend_name, self.device, fp8_checkpoint)
        if config.quantization == "fp8" or fp8_checkpoint:  # refuse before loading gigabytes
            source = "quantization='fp8'" if config.quantization == "fp8" else "an fp8 checkpoint (its quantization_config)"
            _check_fp8(resolve_dtype(config.dtype, checkpoint), self.device, source)
        self.model, self.model_config = load_model(
            model_path,
            dtype=config.dtype,
            device=self.device,
            load_format=config.load_format,
            attn_backend=self.attn_backend,
            seed=config.random_seed,
        )
        self.dtype = resolve_dtype(config.dtype, self.model_config)
        if config.quantization == "fp8":
            self._quantize_fp8()
        if config.deterministic_inference:
            logger.info("deterministic inference: %d products on the batch-invariant kernel", self.model.make_batch_invariant())
        self.kv_dtype = resolve_kv_dtype(config.kv_cache_dtype, self.dtype)
        if self.attention_backend_name == "flashinfer" and self.dtype == torch.float32:
            raise ValueError("attention_backend='flashinfer' needs dtype float16 or bfloat16, not float32")
        if self.attention_backend_name == "flashinfer" and self.kv_dtype != self.dtype:
            raise ValueError(
                f"kv_cache_dtype={config.kv_cache_dtype!r} needs attention_backend 'triton' or 'torch_native', "
                "not 'flashinfer'")
        self.context_len = self._context_len()
        self.vocab_size = self.model_config.vocab_size
        self.max_total_tokens = self._pool_size()
        mc = self.model_config
        self.kv_pool = KVPool(self.max_total_tokens, mc.num_layers, mc.num_kv_heads, mc.head_dim, self.kv_dtype, self.device)
        self.allocator = TokenSlotAllocator(self.max_total_tokens, self.device)
        self.max_running_requests = config.max_running_requests or auto_max_running_requests(self.max_total_tokens)
        self.req_to_token_pool = ReqToTokenPool(
            self.max_running_requests + _SPARE_ROWS, self.context_len + 1, self.device
        )
        if self.device.type == "cuda":  # compile now what a later step would otherwise wait for
            from runtime import argmax

            self.attn_backend.warm_up(self.model.attention_layer, self.dtype, self.kv_dtype, self.device)
            argmax.warm_up(self.vocab_size, self.device)
        self.matmul_routes = self._choose_matmul_routes()
        self.gated_routes = self._choose_gated_routes()
        if self.device.type == "cuda":
            # the timings' weight copies and outputs (~3 GB at an 8B model's 8k rows) stay cached by the
            # allocator, where the CUDA graphs' own memory pool, captured next, could not use them
            torch.cuda.empty_cache()
        self.cuda_graph = self._maybe_capture_cuda_graphs()
        logger.info(
            "model %s on %s (%s), attention %s, KV pool %d tokens (%s), context %d",
            mc.architecture, self.device, self.dtype, self.attention_backend_name, self.max_total_tokens, self.kv_dtype,
            self.context_len,
        )

    def _quantize_fp8(self) -> None:
        from runtime.model.fp8 import quantize_model

        layers = quantize_model(self.model)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the bf16 weights' memory goes back to the KV budget
        logger.info("fp8 weights in %d linear layers", layers)

    def _context_len(self) -> int:
        model_len = self.model_config.context_length
        if self.config.context_length is None:
            return model_len
        if self.config.context_length > model_len:
            logger.warning("context_length %d exceeds the model's %d", self.config.context_length, model_len)
        return self.config.context_length

    def _pool_size(self) -> int:
        if self.config.max_total_tokens is not None:
            return self.config.max_total_tokens
        mc = self.model_config
        per_token = KVPool.bytes_per_token(mc.num_layers, mc.num_kv_heads, mc.head_dim, self.kv_dtype)
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            # what the static budget leaves after the weights already loaded (and a bit for activations)
            budget = free - total * (1.0 - self.config.mem_fraction_static)
        else:
            budget = self.config.kv_cache_bytes
        size = int(budget // per_token)
        if size < 16:
            raise ValueError(f"the KV budget holds only {size} tokens; raise mem_fraction_static or kv_cache_bytes")
        return size

    def _may_time_own_matmuls(self) -> bool:
        """Whether start-up may put products on our Triton kernels where they time faster: a 16-bit model
        on a GPU, our kernels not switched off (SGFLOW_DISABLE_FUSED=1), no batch-invariant products."""
        import os

        return (self.device.type == "cuda" and self.dtype != torch.float32
                and os.environ.get("SGFLOW_DISABLE_FUSED") != "1" and not self.config.deterministic_inference)

    def _choose_matmul_routes(self) -> dict:
        """Decode projections: our Triton vector / skinny kernels where they measure faster than cuBLAS."""
        if not self._may_time_own_matmuls():
            return {}
        from runtime.model.matmul_choice import choose_matmul_routes

        try:
            chosen = choose_matmul_routes(self.model)
        except Exception:  # a kernel that does not build here: cuBLAS everywhere
            logger.warning("skinny matmul unavailable; using cuBLAS", exc_info=True)
            return {}
        logger.info("decode matmul per weight shape: %s", {k: str(v) for k, v in chosen.items()})
        return chosen

    def _choose_gated_routes(self) -> dict:
        """The MLP's gated product per batch size: our fused kernel where it measures faster than cuBLAS
        + silu·mul (gated_choice.py)."""
        if not self._may_time_own_matmuls() or self.config.disable_gated_matmul:
            return {}
        from runtime.model.gated_choice import choose_gated_routes

        max_m = max(self.config.max_prefill_tokens, self.config.chunked_prefill_size, self.max_running_requests)
        try:
            chosen = choose_gated_routes(self.model, max_m)
        except Exception:  # a kernel that does not build here: cuBLAS everywhere
            logger.warning("gated matmul unavailable; using cuBLAS + silu·mul", exc_info=True)
            for module in self.model.modules():
                if hasattr(module, "gated_route"):
                    module.gated_route = None
            return {}
        logger.info("MLP gated product per weight shape: %s", {k: str(v) for k, v in chosen.items()})
        return chosen

    def _maybe_capture_cuda_graphs(self):
        if self.device.type != "cuda" or self.config.disable_cuda_graph or not self.attn_backend.supports_cuda_graph:
            return None
        from runtime.cuda_graph_runner import CudaGraphRunner

        max_bs = min(self.config.cuda_graph_max_bs, self.max_running_requests)
        return CudaGraphRunner(self, max_bs)

    def release(self) -> None:
        """Free device memory held by the model, the KV pool and the CUDA graphs."""
        import gc

        self.cuda_graph = None
        self.model = None
        self.kv_pool = None
        self.attn_backend = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def decode(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [B, vocab] float32 for a decode batch: CUDA-graph replay when captured. Also writes
        each request's new KV slot (out_cache_loc) at its position in the slot table; the graph
        runner does that in the kernel that stages its inputs."""
        if self.cuda_graph is not None and self.cuda_graph.can_run(batch):
            return self.cuda_graph.replay(batch)
        self.write_decode_slots(batch)
        return self.compute_logits(self.forward(batch))

    @staticmethod
    def write_decode_slots(batch: ForwardBatch) -> None:
        """req_to_token[row, position] = new slot for every request of a decode batch (idempotent).
        A torch op, ordered before the forward's kernels: decode attention reads the table before its
        PDL wait (decode.py), so this write must never move into a PDL-launched kernel."""
        batch.req_to_token[batch.req_pool_indices, batch.positions] = batch.out_cache_loc.to(torch.int32)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """hidden states [T, hidden] for the batch's new tokens (final norm applied)."""
        self.attn_backend.prepare(batch)
        return self.model(batch.input_ids, batch.positions, batch)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] → [N, vocab] float32."""
        return self.model.compute_logits(hidden)
