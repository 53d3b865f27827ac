"""Agreement checks (sections of bench_gpu.py): greedy tokens against HF transformers on a small
float32 model for every attention variant; on the Llama-3-8B shape, our first-step logits against
HF's on the same random weights (with a float32 reference for scale), and the FlashInfer backend
against the Triton one end to end.
"""

from __future__ import annotations

import os

import torch

from benchmarks.bench_gpu import LLAMA3_8B, decode_b1, free_memory, offline


def small(workdir):
    """Greedy tokens of a small float32 Llama against HF's, per attention variant; the pool whole."""
    from runtime.model.tiny import build_tiny_model
    from tests.integration.engine_helpers import hf_greedy
    from transformers import AutoTokenizer

    path = build_tiny_model(os.path.join(workdir, "small"), arch="llama", hidden_size=256, num_layers=4,
                            num_heads=8, num_kv_heads=2, intermediate_size=512)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [tok.encode(p) for p in ["Hello", "The cat sees the dog.", "Q: What is paris? A:", "1. a, b, c"]]
    expected = hf_greedy(path, prompts, 16)
    out = {}
    variants = {"triton+graphs": {}, "triton": {"disable_cuda_graph": True}, "torch_native": {"attention_backend": "torch_native"},
                "triton chunk 5": {"chunked_prefill_size": 5}}
    for name, extra in variants.items():
        opts = {"attention_backend": "triton", **extra}
        from runtime import Engine

        try:
            with Engine(model_path=path, dtype="float32", **opts) as engine:
                got = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True})
                engine.check_integrity()
            out[name] = "equal" if [g["output_ids"] for g in got] == expected else "DIFFERENT"
        except Exception as exc:
            out[name] = f"error: {exc}"[:200]
    return out


def cast_keeping_rope(hf, dtype: torch.dtype):
    """hf.to(dtype), but the rotary frequencies stay float32. A plain `.to(bfloat16)` rounds the
    `inv_freq` buffers too, and a later `.float()` cannot undo it: RoPE angles are then off by up to
    2^-9 relative, about a radian at position 500. HF's loaders keep them float32
    (`from_pretrained(dtype=...)`), and so do we. A first version of this check compared against
    such a rounded "float32" model and reported our bf16 error as 6.6x HF's (4.4% vs 0.67%)."""
    saved = {(module, name): buffer.float().clone()
             for module in hf.modules() for name, buffer in module.named_buffers(recurse=False) if "inv_freq" in name}
    hf = hf.to(dtype)
    for (module, name), buffer in saved.items():
        setattr(module, name, buffer)
    return hf


def logits(path):
    from runtime import Engine
    from runtime.model.loader import _copy_tensor, checkpoint_targets
    from runtime.model.fp8 import quantize_model
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("cuda"):
        hf = cast_keeping_rope(LlamaForCausalLM(LlamaConfig(**{k: v for k, v in LLAMA3_8B.items() if k != "architectures"})),
                               torch.bfloat16).eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():  # initialise explicitly: a bare constructor may leave memory uninitialised
        for name, p in hf.named_parameters():
            p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02, generator=gen)
    ids = torch.randint(100, 120000, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    rows, targets = torch.arange(len(ids) - 1), torch.tensor(ids[1:])

    def ours_with(kv_cache_dtype, fp8_weights=False):  # our prompt logprobs on HF's weights, and greedy token
        engine = Engine(model_path=path, load_format="dummy", max_total_tokens=4096, disable_cuda_graph=True,
                        max_running_requests=4, kv_cache_dtype=kv_cache_dtype)
        names = checkpoint_targets(engine.runner.model)
        with torch.no_grad():
            for name, tensor in hf.state_dict().items():
                if name in names:
                    _copy_tensor(name, tensor, *names[name])
            if fp8_weights:  # as quantization="fp8" does after loading, here after HF's weights are in
                quantize_model(engine.runner.model)
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                              return_logprob=True, logprob_start_len=0)
        engine.shutdown()
        del engine
        free_memory()
        return torch.tensor([lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]]), out["output_ids"][0]

    ours, our_first = ours_with("auto")
    ours_fp8, _ = ours_with("fp8_e4m3")  # the lossy KV option: how far from exact does it move us?
    ours_fp8w, fp8w_first = ours_with("auto", fp8_weights=True)  # the lossy weight option
    with torch.no_grad():
        ref = hf(torch.tensor([ids], device="cuda")).logits[0].float()
    theirs = torch.log_softmax(ref, -1)[rows, targets].cpu()
    first = int(ref[-1].argmax())
    del ref
    free_memory()
    hf = cast_keeping_rope(hf, torch.float32)  # the same weights in float32: how far is bf16 (HF's or ours) from exact?
    with torch.no_grad():
        exact = torch.log_softmax(hf(torch.tensor([ids], device="cuda")).logits[0].float(), -1)[rows, targets].cpu()
    del hf
    free_memory()

    def rel(a, b):
        return round(float((a - b).norm() / b.norm()), 5)

    return dict(prompt_logprob_max_abs_err=round(float((ours - theirs).abs().max()), 4),
                prompt_logprob_rel_err_vs_hf_bf16=rel(ours, theirs), ours_bf16_rel_err_vs_fp32=rel(ours, exact),
                hf_bf16_rel_err_vs_fp32=rel(theirs, exact), ours_fp8_kv_rel_err_vs_fp32=rel(ours_fp8, exact),
                ours_fp8_weights_rel_err_vs_fp32=rel(ours_fp8w, exact), first_token_equal=our_first == first,
                fp8_weights_first_token_equal=fp8w_first == first)


def flashinfer_e2e(path, copy_tb_s):
    """The FlashInfer backend on the 8B shape (head_dim 128): same dummy weights as the Triton engine,
    so prompt logprobs agree to bf16 noise; batch-1 decode and a 300-request offline run."""
    from runtime import Engine

    ids = torch.randint(100, 120000, (512,), generator=torch.Generator().manual_seed(3)).tolist()
    probe = dict(input_ids=ids, sampling_params={"max_new_tokens": 16, "temperature": 0, "ignore_eos": True},
                 return_logprob=True, logprob_start_len=0)
    res, logprobs = {}, {}
    for backend in ("triton", "flashinfer"):
        engine = Engine(model_path=path, load_format="dummy", attention_backend=backend)
        out = engine.generate(**probe)
        logprobs[backend] = torch.tensor([lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]])
        res[f"{backend}_first_16_tokens"] = out["output_ids"]
        if backend == "flashinfer":
            res["decode_b1_1k"] = decode_b1(engine, copy_tb_s)
            res["offline_300"] = offline(engine, 300)
        engine.check_integrity()
        engine.shutdown()
        del engine
        free_memory()
    a, b = logprobs["flashinfer"], logprobs["triton"]
    res["prompt_logprob_rel_err_vs_triton"] = round(float((a - b).norm() / b.norm()), 5)
    res["greedy_tokens_equal_triton"] = res["triton_first_16_tokens"] == res["flashinfer_first_16_tokens"]
    return res
