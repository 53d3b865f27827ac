"""The Llama family (Llama 2/3/3.1, Mistral, Qwen2, Qwen3) as one model over a paged KV cache.

The variants differ only in what `ModelConfig` records: q/k/v and o_proj biases (Qwen2, Llama with
attention_bias), per-head q/k RMSNorm before RoPE (Qwen3), RoPE scaling (Llama-3.1), tied embeddings.
Parameter names mirror HF's, except q/k/v → `qkv_proj` and gate/up → `gate_up_proj`, which the loader
fills from the separate checkpoint tensors.

Shapes: T = tokens in the step, H = heads, KvH = KV heads, D = head_dim, I = intermediate size.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from runtime.attention.base import AttentionLayer, BaseAttentionBackend
from runtime.forward_batch import ForwardBatch
from runtime.model.config import ModelConfig
from runtime.model.layers import (
    NORM_INPUT, Embedding, GatedMLP, Linear, MergedLinear, RMSNorm, fused_kernels, norm_then_linear,
)
from runtime.model.registry import register_model
from runtime.model.rotary import RotaryEmbedding, apply_rotary


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, attn_backend: BaseAttentionBackend):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(
            config.hidden_size, {"q_proj": q_size, "k_proj": kv_size, "v_proj": kv_size}, bias=config.attention_bias
        )
        self.o_proj = Linear(q_size, config.hidden_size, bias=config.attention_output_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.layer = AttentionLayer(layer_id, self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5)
        self.attn_backend = attn_backend

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        return self.attend(self.qkv_proj(hidden), cos, sin, batch)

    def _backend_rotates(self, q: torch.Tensor) -> bool:
        # On a GPU only while our elementwise kernels are on: SGFLOW_DISABLE_FUSED=1, or their start-up
        # check failing, puts RoPE back on the plain torch path for every backend.
        return self.attn_backend.can_fuse_rotary(q) and (not q.is_cuda or fused_kernels(q) is not None)

    def attend(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch,
               output_rows_only: bool = False) -> torch.Tensor:
        """From the qkv projection's output [T, (H + 2 KvH) D] (q heads, k heads, v heads): rotary,
        the KV write and attention, then o_proj → [T, hidden]. With `output_rows_only` every token's
        K/V is still written, but attention and o_proj run for batch.output_rows only → [R, hidden]."""
        num_tokens, heads = qkv.shape[0], self.num_heads
        backend = self.attn_backend
        attention = backend.forward_output_rows if output_rows_only else backend.forward
        qk_heads = heads + self.num_kv_heads
        qk = qkv[:, : qk_heads * self.head_dim].view(num_tokens, qk_heads, self.head_dim)
        v = qkv[:, qk_heads * self.head_dim :].view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, KvH, D]
        if self.qk_norm:  # Qwen3 normalises each head before rotating, as HF does
            q, k = self.q_norm(qk[:, :heads]), self.k_norm(qk[:, heads:])
        else:
            q, k = qk[:, :heads], qk[:, heads:]  # [T, H, D], [T, KvH, D]
        if self._backend_rotates(q):  # rotated as the backend writes the KV (same numbers)
            out = attention(q, k, v, self.layer, batch, rotary=(cos, sin))  # [T (or R), H, D]
            return self.o_proj(out.reshape(out.shape[0], heads * self.head_dim))
        if self.qk_norm:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        else:  # q and k heads side by side: one rotary launch for both (per head, so the same numbers)
            qk = apply_rotary(qk, cos, sin)  # [T, H + KvH, D]
            q, k = qk[:, :heads], qk[:, heads:]
        out = attention(q, k, v, self.layer, batch)  # [T (or R), H, D]
        return self.o_proj(out.reshape(out.shape[0], heads * self.head_dim))  # [T (or R), hidden]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, attn_backend: BaseAttentionBackend):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, attn_backend)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn.qkv_proj.fused_input = self.mlp.gate_up_proj.fused_input = NORM_INPUT  # see forward

    def forward(
        self,
        hidden: torch.Tensor,
        residual: Optional[torch.Tensor],
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: ForwardBatch,
        output_rows_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's MLP output, the residual stream before it): the next layer (or the
        final norm) adds them, so each add is fused with the norm that follows it, and where the
        projection after the norm runs on the vector kernel, with that projection too. With
        `output_rows_only` (the last layer of a step that needs only batch.output_rows) both are
        [R, hidden]: every token's K/V is written, the rest runs for those rows."""
        attn = self.self_attn
        qkv, residual = norm_then_linear(self.input_layernorm, attn.qkv_proj, hidden, residual)
        hidden = attn.attend(qkv, cos, sin, batch, output_rows_only)
        if output_rows_only:
            residual = residual[batch.output_rows]
        return self.mlp.forward_after_norm(self.post_attention_layernorm, hidden, residual)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: BaseAttentionBackend):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, attn_backend) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [T] → [T, hidden]
        cos, sin = self.rotary_emb.lookup(positions)  # 2 × [T, D/2] float32, shared by all layers
        residual = None
        # A step that needs some rows only (ForwardBatch.output_rows) needs all of them up to the last
        # layer's K/V: the last layer's attention output, MLP and the final norm run for those rows.
        last = len(self.layers) - 1 if batch.output_rows is not None else -1
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, cos, sin, batch, output_rows_only=i == last)
        hidden, _ = self.norm.forward_with_residual(hidden, residual)
        return hidden


@register_model("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
class LlamaForCausalLM(nn.Module):
    """A decoder over the paged KV pool. Parameters are uninitialised until the loader fills them
    (see runtime/model/loader.py); build it through `load_model`."""

    def __init__(self, config: ModelConfig, attn_backend: BaseAttentionBackend):
        super().__init__()
        self.config = config
        self.attn_backend = attn_backend
        self.model = LlamaModel(config, attn_backend)
        self.batch_invariant_logits = False
        if config.tie_word_embeddings:
            # NOTE: the same module, so the same Parameter: named_parameters() lists it once, as
            # model.embed_tokens.weight, and the loader fills it once.
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """input_ids, positions [T] → final-normed hidden states [T, hidden] ([R, hidden]: the rows
        batch.output_rows names, when set).

        Writes this step's K/V into batch.kv_pool. The caller runs `attn_backend.prepare(batch)` first,
        once per step (the model does not, so CUDA-graph replay can keep host planning outside)."""
        return self.model(input_ids, positions, batch)

    def make_batch_invariant(self) -> int:
        """Every product, the LM head's included, on the batch-invariant kernel (deterministic
        inference, invariant_matmul.py) → the number of layers switched."""
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        for linear in linears:
            linear.batch_invariant = True
        self.batch_invariant_logits = True  # a tied LM head is the embedding, not a Linear
        return len(linears)

    @property
    def attention_layer(self) -> AttentionLayer:
        """The attention shape every layer shares (layer_id 0's), for backends that plan ahead."""
        return self.model.layers[0].self_attn.layer

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [N, hidden] → logits [N, vocab] float32 (rounded to the model dtype first, as HF's are),
        written into `out` when given: one widening copy instead of a float32 temporary and a second
        copy, which at a decode batch of 500 is ~0.5 GB of traffic a step."""
        if isinstance(self.lm_head, Linear):  # may route batch 1 to the vector kernel (gemv.py)
            logits = self.lm_head(hidden)
        elif self.batch_invariant_logits:
            from runtime.model.invariant_matmul import invariant_matmul

            logits = invariant_matmul(hidden, self.lm_head.weight)
        else:
            logits = torch.nn.functional.linear(hidden, self.lm_head.weight)
        return logits.float() if out is None else out.copy_(logits)
