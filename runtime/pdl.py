"""Programmatic dependent launch (PDL) for our Triton kernels, on Hopper and later GPUs.

A batch-1 decode step is ~350 kernels in a row. Most are far too small to fill the GPU, and even the
matrix-vector products lose time at their edges: memory sits idle while a kernel ramps up, drains,
or while a small kernel (a norm, a rotary, the attention of one token) runs between two of them.
With PDL a kernel may be launched while its predecessor still runs: its programs are resident and
waiting (`gdc_wait()`) the moment the predecessor's results are ready, so no launch gap and no
ramp-up separates the two.

Every kernel launched with PDL keeps these rules, which make the overlap safe:
- every program calls `gdc_wait()` before it reads or writes any memory an earlier kernel may write
  or read (no early return ahead of the wait). Its predecessor could only finish after its own wait,
  so this orders it after every earlier kernel, not just the one before. The one read allowed ahead
  of the wait is of weights (runtime/model/matvec.py): nothing writes them during forward passes,
  and the code that does write them (loading) is followed by ordinary, fully ordered kernels. The
  same holds for what only the work before a forward pass writes: the slot table, the batch's rows
  and lengths, and the KV of earlier steps (runtime/attention/triton/decode.py reads a tile of it
  early). That work ends in ordinary kernels and copies, which a PDL launch cannot overtake;
- a small kernel lets its dependents launch at once (`gdc_launch_dependents()` on entry); a
  matrix-vector product only after its main loop, so the next one's programs don't take SM slots
  its own still need.

Kernels take a `PDL` constexpr, and `launch_args(device)` at launch supplies it. Both are off on the CPU (the
interpreter has no grid dependency control), on GPUs older than Hopper, on a Triton without it, and
when SGFLOW_DISABLE_PDL=1 (read at the first launch on each GPU).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # older Triton: never called, because enabled() is then False
    gdc_launch_dependents = gdc_wait = None

_STATE: dict[str, bool | None] = {"forced": None}
_SUPPORTED: dict[int, bool] = {}  # per device index: switch, capability and Triton checked once


def _triton_launches_pdl() -> bool:
    if gdc_wait is None:
        return False
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        return False
    return "launch_pdl" in getattr(compiler.CUDAOptions, "__dataclass_fields__", {})


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL."""
    if device.type != "cuda":
        return False
    if _STATE["forced"] is not None:
        return bool(_STATE["forced"])
    # NOTE: asked twice per kernel launch (eager decode launches ~300 kernels a step): one lookup
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SUPPORTED:
        _SUPPORTED[index] = (os.environ.get("SGFLOW_DISABLE_PDL") != "1"
                             and torch.cuda.get_device_capability(index)[0] >= 9 and _triton_launches_pdl())
    return _SUPPORTED[index]


def force(on: bool | None) -> None:
    """Override the automatic choice (benchmarks compare both; None restores it and reads
    SGFLOW_DISABLE_PDL again). A change applies to kernels launched, and CUDA graphs captured, after it."""
    _STATE["forced"] = on
    _SUPPORTED.clear()


def launch_args(device: torch.device) -> dict:
    """Keyword arguments for a Triton launch on `device`: the kernel's `PDL` constexpr and, when on,
    Triton's `launch_pdl`."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {"PDL": False}


@triton.jit
def enter_small_kernel(PDL: tl.constexpr):
    """First statement of a small PDL kernel: let the next kernel launch now, then wait for ours."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


__all__ = ["enabled", "force", "launch_args", "enter_small_kernel", "gdc_wait", "gdc_launch_dependents"]
