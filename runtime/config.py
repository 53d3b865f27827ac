"""Engine configuration: one frozen dataclass, the single source of truth.

Option names follow SGLang's server arguments where they exist, so users can switch. The CLI
(`sgflow serve`) generates one flag per field from this dataclass, with the help text below.
Derived values are properties; nothing mutates a config after construction (use `replace`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


def _opt(default, help: str, choices: Optional[tuple] = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class EngineConfig:
    # --- model
    model_path: Optional[str] = _opt(None, "Local HF-format model directory (default: the embedded model).")
    tokenizer_path: Optional[str] = _opt(None, "Tokenizer directory (default: model_path).")
    dtype: str = _opt("auto", "Weight/activation dtype.", ("auto", "float32", "bfloat16", "float16"))
    load_format: str = _opt("auto", "'dummy' gives random weights of the right shapes.", ("auto", "safetensors", "dummy"))
    device: str = _opt("auto", "'cpu', 'cuda' or 'auto' (cuda when available).")
    context_length: Optional[int] = _opt(None, "Max tokens per request (default: the model's).")
    quantization: Optional[str] = _opt(
        None,
        "'fp8': every matmul but the LM head's in fp8 (e4m3) with one scale per weight row and per input "
        "row, computed after loading; needs dtype bfloat16 and, on a GPU, compute capability 8.9+. Halves "
        "the weights' bytes; prefill's matmuls ran 1.6x faster on an H200. Lossy (benchmarks/RESULTS.md). "
        "Checkpoints saved in fp8 need no option: per-tensor/channel ones load in fp8 as they are, block-scaled "
        "ones are dequantised at load (this option then rounds them to fp8 again).",
        (None, "fp8"),
    )
    # --- memory
    mem_fraction_static: float = _opt(0.85, "GPU: fraction of device memory for weights + KV pool.")
    kv_cache_bytes: int = _opt(256 * 2**20, "CPU: byte budget for the KV pool.")
    max_total_tokens: Optional[int] = _opt(None, "KV pool size in tokens (overrides the budgets).")
    page_size: int = _opt(1, "Tokens per KV page.")
    kv_cache_dtype: str = _opt(
        "auto",
        "KV cache storage. 'auto': the model dtype. fp8 halves the pool's bytes per token and the KV read of "
        "every decode step, and is lossy: each K/V value is rounded to fp8 (e4m3: 3 mantissa bits, up to 448; "
        "e5m2: 2 bits, up to 57344), with no scaling.",
        ("auto", "fp8_e4m3", "fp8_e5m2"),
    )
    # --- scheduling
    max_running_requests: Optional[int] = _opt(
        None,
        "Most requests decoding at once. Default: what the KV pool holds at 512 tokens each, between 16 "
        "and 1024 (large batches amortise each step's weight reads; the pool bounds them anyway).",
    )
    max_queued_requests: int = _opt(4096, "Most requests waiting; more are refused (HTTP 503).")
    chunked_prefill_size: int = _opt(8192, "Prefill token budget per step; longer prompts are chunked. -1: off.")
    max_prefill_tokens: int = _opt(16384, "Most new prefill tokens in one extend batch.")
    schedule_policy: str = _opt("fcfs", "Order of waiting requests.", ("fcfs", "lpm"))
    disable_radix_cache: bool = _opt(False, "Turn the prefix cache off (A/B runs).")
    new_token_ratio: float = _opt(0.4, "Share of max_new_tokens reserved per running request when admitting.")
    disable_overlap_schedule: bool = _opt(
        False,
        "Prepare each step only after the previous one's tokens reach the host (no CPU/GPU overlap). "
        "Overlap applies on CUDA devices only: on the CPU every op is synchronous.",
    )
    random_seed: int = _opt(0, "Seed for sampling without a per-request seed and for dummy weights.")
    # --- kernels
    attention_backend: str = _opt("auto", "Attention kernels.", ("auto", "torch_native", "triton", "flashinfer"))
    disable_cuda_graph: bool = _opt(False, "Run decode without CUDA graphs.")
    cuda_graph_max_bs: int = _opt(512, "Largest decode batch captured in a CUDA graph.")
    disable_gated_matmul: bool = _opt(
        False,
        "Keep the MLP's gate_up product on cuBLAS followed by a silu·mul kernel at every batch size (A/B runs). "
        "Otherwise start-up timing on the GPU picks, per batch size, cuBLAS or our Triton product that applies "
        "silu·mul before writing its output.",
    )
    disable_output_rows_only: bool = _opt(
        False,
        "Run a prefill step's last layer (attention output, MLP) and final norm for every prompt token, "
        "not only for the tokens whose logits the step samples or scores (A/B runs). The results are equal up "
        "to rounding: on a GPU fewer rows can take other matmul kernels.",
    )
    deterministic_inference: bool = _opt(
        False,
        "Batch-invariant kernels: a request's tokens and logprobs have the same bits alone or in any batch, "
        "with CUDA graphs or without, its prompt chunked or not, its prompt's prefix cached or not. Every matmul "
        "runs one Triton launch shape per weight, decode attention splits each request by its own length, prefill attention "
        "one tile path, logprobs one row kernel; finished requests leave only their prompt's KV in the prefix "
        "cache, and jump-forward is off. A request retracted for memory recomputes its answer's KV by prefill "
        "and matches from then on only up to rounding. Needs the Triton attention backend (a GPU, or a CPU under "
        "TRITON_INTERPRET=1), our Triton norm kernels and unquantized weights. Slower than the default: about "
        "half its batch-1 speed on an H200 with the first launch shapes (benchmarks/RESULTS.md).",
    )
    # --- constrained decoding
    disable_jump_forward: bool = _opt(False, "Decode forced grammar text token by token.")
    jump_forward_max_batch: Optional[int] = _opt(
        None,
        "Jump forward only while at most this many requests decode: a jump costs an extend step that the "
        "others wait for. Default: 1 when decode runs in CUDA graphs (an eager extend costs several "
        "graph steps), unlimited otherwise.",
    )
    grammar_compile_timeout: float = _opt(10.0, "Seconds a regex/schema may take to compile.")
    json_whitespace_pattern: Optional[str] = _opt(None, "Regex for whitespace in JSON output (default: compact).")
    # --- limits for untrusted input
    max_n: int = _opt(64, "Largest `n` per request.")
    max_stop_strings: int = _opt(32, "Most stop strings per request.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        for name in ("page_size", "max_running_requests", "max_queued_requests", "max_prefill_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.chunked_prefill_size == 0 or self.chunked_prefill_size < -1:
            raise ValueError(f"chunked_prefill_size must be -1 (off) or >= 1, got {self.chunked_prefill_size}")
        if self.jump_forward_max_batch is not None and self.jump_forward_max_batch < 1:
            raise ValueError(f"jump_forward_max_batch must be >= 1, got {self.jump_forward_max_batch}")
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")
        if self.page_size != 1:
            # NOTE: the radix cache and allocators are written for page_size 1; larger pages need
            # page-aligned matching, which is not built yet.
            raise ValueError(f"page_size must be 1 for now, got {self.page_size}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    @property
    def resolved_tokenizer_path(self) -> Optional[str]:
        return self.tokenizer_path or self.model_path

    @property
    def chunked_prefill_enabled(self) -> bool:
        return self.chunked_prefill_size > 0
