"""Test-module set-up for Triton kernels on machines without CUDA: they run in Triton's interpreter; and
modules filled with small random weights for kernel tests."""

from __future__ import annotations

import os
import sys

import torch


def use_interpreter_for(*module_names: str) -> bool:
    """Without CUDA: set TRITON_INTERPRET, which Triton reads when a kernel is decorated, so it must
    be set before triton and `module_names` are first imported. A module imported earlier for the
    compiler cannot be fixed by a reload (triton's own library would be compiled-only too): that is
    an error naming the module. Returns whether the interpreter is in use."""
    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    for name in module_names:
        module = sys.modules.get(name)
        # by type name: the check must not import triton itself (test modules importorskip it afterwards)
        if module is not None and any(type(v).__name__ == "JITFunction" for v in vars(module).values()):
            raise RuntimeError(f"{name} was imported before TRITON_INTERPRET was set, so its kernels cannot run on "
                               "the CPU: import it in tests only after use_interpreter_for()")
    return True


def filled_randomly(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter of `module` (built uninitialised, as the loader builds them) drawn from
    N(0, scale²) with its own seed: small enough that activations stay in range."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module
