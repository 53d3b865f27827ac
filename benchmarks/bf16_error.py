"""How far bf16 inference is from float32 on the same random weights: HF transformers vs our engine
per attention backend (diagnostic for the logits check in bench_gpu.py).

    python benchmarks/bf16_error.py [--device cuda] [--backends triton,torch_native]
    SGFLOW_DISABLE_FUSED=1 python benchmarks/bf16_error.py ...   # our plain-torch elementwise ops

Prints the relative L2 error of prompt-token logprobs against HF float32 for each variant.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default="triton,torch_native" if torch.cuda.is_available() else "torch_native")
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from runtime import Engine
    from runtime.model.tiny import build_tiny_model

    path = build_tiny_model(tempfile.mkdtemp(), hidden_size=1024, num_layers=args.layers, num_heads=8, num_kv_heads=2,
                            intermediate_size=2048, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the GPU benchmark's initialisation: N(0, 0.02), norms 1
        for name, p in model.named_parameters():
            p.fill_(1.0) if "norm" in name else p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save_pretrained(path)
    ids = torch.randint(5, 380, (512,), generator=torch.Generator().manual_seed(1)).tolist()
    rows, targets = torch.arange(len(ids) - 1), torch.tensor(ids[1:])

    def hf(dtype):
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
        with torch.no_grad():
            return torch.log_softmax(m(torch.tensor([ids], device=args.device)).logits[0].float(), -1)[rows, targets].cpu()

    exact = hf(torch.float32)
    results = {"hf bfloat16": hf(torch.bfloat16)}
    for backend in args.backends.split(","):
        with Engine(model_path=path, dtype="bfloat16", device=args.device, attention_backend=backend,
                    disable_cuda_graph=True) as engine:
            out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1, "temperature": 0},
                                  return_logprob=True, logprob_start_len=0)
        results[f"ours bfloat16 {backend}"] = torch.tensor([lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]])
    fused = "off" if os.environ.get("SGFLOW_DISABLE_FUSED") == "1" else "on"
    for name, got in results.items():
        print(f"{name:32s} fused={fused}  rel err vs HF float32: {float((got - exact).norm() / exact.norm()):.2e}", flush=True)


if __name__ == "__main__":
    main()
