"""Test-module set-up for Triton kernels on machines without CUDA: they run in Triton's interpreter."""

from __future__ import annotations

import importlib
import os
import sys

import torch


def use_interpreter_for(*module_names: str) -> bool:
    """Without CUDA: set TRITON_INTERPRET (read when a kernel is decorated) and re-import those of
    `module_names` that an earlier import built for the compiler, all of them together (a module
    holds functions imported from the others). Only then: a test module imported twice (pytest's
    own name and `tests.kernels....`) must not leave two versions of a class behind, one of them
    registered. Returns whether the interpreter is in use."""
    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    loaded = [sys.modules[name] for name in module_names if name in sys.modules]
    # by name: the check must not import triton itself (test modules importorskip it afterwards)
    if any(type(value).__name__ == "JITFunction" for module in loaded for value in vars(module).values()):
        for module in loaded:
            importlib.reload(module)
    return True
