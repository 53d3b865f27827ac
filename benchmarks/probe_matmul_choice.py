"""Batch-1 decode with the start-up matmul choice charging cuBLAS for the input kernels the vector
kernel fuses (the default) against the choice timing each product alone (before), on a GPU.

    python benchmarks/probe_matmul_choice.py

Three engines one after another on the dummy 8B model: charged, alone, charged again (the repeat
shows the run-to-run spread). Prints each engine's routes and bench_gpu's batch-1 decode figures.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import runtime.model.matmul_choice as matmul_choice  # noqa: E402
from benchmarks.bench_gpu import decode_b1, env, model_dir  # noqa: E402
from runtime import Engine  # noqa: E402

_CHARGED = matmul_choice.choose_matmul_routes


def _product_alone(model, **kwargs):
    """The earlier choice: every projection timed as if its input were ready."""
    saved = {m: m.fused_input for m in model.modules() if hasattr(m, "fused_input")}
    for module in saved:
        module.fused_input = None
    try:
        return _CHARGED(model, **kwargs)
    finally:
        for module, fused_input in saved.items():
            module.fused_input = fused_input


def main() -> None:
    card = env()
    print("env", card, flush=True)
    path = model_dir(tempfile.mkdtemp())
    for label in ("inputs_charged", "product_alone", "inputs_charged_again"):
        # the runner imports choose_matmul_routes from the module when it starts
        matmul_choice.choose_matmul_routes = _product_alone if label == "product_alone" else _CHARGED
        engine = Engine(model_path=path, load_format="dummy")
        routes = {str(k): str(v) for k, v in engine.runner.matmul_routes.items()}
        print(label, json.dumps({"routes": routes, "decode": decode_b1(engine, card["copy_tb_s"])}), flush=True)
        engine.shutdown()
        del engine
        torch.cuda.empty_cache()
    matmul_choice.choose_matmul_routes = _CHARGED


if __name__ == "__main__":
    main()
