"""Triton's CPU interpreter (TRITON_INTERPRET=1), which is how CI runs our kernels: when it is on,
and the one place it computes differently from a GPU.

On the GPU a kernel converts float32 → fp8 or bfloat16 with the hardware's round-to-nearest-even,
which matches torch's cast. The interpreter's conversions do not: to fp8, when rounding carries out
of the mantissa (1.99 → 2.0 in e4m3) it loses the carry (1.0); to bfloat16 it truncates. So kernels
that round to those formats pass `EXACT=True` under the interpreter and round in float32 arithmetic
first (`round_to_fp8`, `round_to_bf16`); the conversion that follows then meets a representable value
and has nothing to round. On the GPU `EXACT` is False and the rounding compiles
to nothing.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

E4M3 = dict(MANT_BITS=3, MIN_EXP=-6)  # float8_e4m3fn: 3 mantissa bits, smallest normal 2^-6
E5M2 = dict(MANT_BITS=2, MIN_EXP=-14)  # float8_e5m2
FP8_FORMATS = {torch.float8_e4m3fn: E4M3, torch.float8_e5m2: E5M2}


def is_interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def can_launch_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA tensors, or on CPU tensors under the interpreter."""
    return device.type == "cuda" or is_interpreting()


CPU_NUM_SMS = 4  # the interpreter's stand-in SM count: it runs programs one by one, so few keep it quick
_SM_COUNTS: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """The SMs a launch on `device` can spread over: the GPU's, or CPU_NUM_SMS on the CPU."""
    if device.type != "cuda":
        return CPU_NUM_SMS
    index = _cuda_index(device)
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


_HOPPER: dict[int, bool] = {}


def hopper_or_later(device: torch.device) -> bool:
    """Whether `device` is a GPU of compute capability 9 or later (the copy engine's tensor copies):
    asked once per device, since eager steps launch ~100 products a step. The CPU interpreter counts
    as one, so the copy-engine paths run in tests."""
    if device.type != "cuda":
        return True
    index = _cuda_index(device)
    if index not in _HOPPER:
        _HOPPER[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _HOPPER[index]


@functools.cache  # asked at every copy-engine launch
def tensor_descriptor_class():
    """Triton's host tensor descriptor (the copy engine's tiles), or None on a Triton older than 3.4."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


def copy_engine_addressable(t: torch.Tensor) -> bool:
    """Whether the copy engine can address t's rows: contiguous rows, a 16-byte aligned base and row
    stride."""
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0


CPU_SHARED_MEMORY = 227 * 1024  # the interpreter has no limit: stand in a Hopper's, so launch shapes match one
_SHARED_MEMORY: dict[int, int] = {}


def shared_memory_bytes(device: torch.device) -> int:
    """The most shared memory one program may take on `device` (the opt-in limit on a GPU)."""
    if device.type != "cuda":
        return CPU_SHARED_MEMORY
    index = _cuda_index(device)
    if index not in _SHARED_MEMORY:
        try:
            _SHARED_MEMORY[index] = int(triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"])
        except Exception:  # an unexpected driver API: the limit every CUDA GPU has
            _SHARED_MEMORY[index] = 48 * 1024
    return _SHARED_MEMORY[index]


def exact_rounding(dtype: torch.dtype = torch.float8_e4m3fn) -> bool:
    """The `EXACT` argument of `round_to_fp8` for a launch that writes `dtype`: True under the
    interpreter when `dtype` is an fp8 format."""
    return is_interpreting() and dtype in FP8_FORMATS


def fp8_format(dtype: torch.dtype) -> dict:
    """`round_to_fp8`'s MANT_BITS and MIN_EXP for `dtype` (e4m3's for a dtype that is not fp8, where
    EXACT is False and they go unused)."""
    return FP8_FORMATS.get(dtype, E4M3)


@triton.jit
def round_to_fp8(x, EXACT: tl.constexpr, MANT_BITS: tl.constexpr, MIN_EXP: tl.constexpr):
    """float32 x, already within the format's range → the nearest value of the format (ties to even),
    as float32, when EXACT; x unchanged otherwise."""
    if EXACT:
        bits = x.to(tl.int32, bitcast=True)
        exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, MIN_EXP)  # below the smallest normal: fixed spacing
        step = ((exponent - MANT_BITS + 127) << 23).to(tl.float32, bitcast=True)  # a power of two
        steps = tl.abs(x) / step  # exact, and below 2^(MANT_BITS + 1)
        steps = (steps + 8388608.0) - 8388608.0  # float32 addition at 2^23 rounds to an integer, ties to even
        magnitude = (steps * step).to(tl.int32, bitcast=True)
        x = (magnitude | (bits & -2147483648)).to(tl.float32, bitcast=True)  # x's sign, -0.0 included
    return x


def exact_bf16(dtype: torch.dtype) -> bool:
    """The `EXACT` argument of `round_to_bf16` for a kernel rounding float32 results to `dtype`: True
    under the interpreter for bfloat16 (float16 converts there as numpy does, to nearest even)."""
    return is_interpreting() and dtype == torch.bfloat16


@triton.jit
def round_to_bf16(x, EXACT: tl.constexpr):
    """float32 x → the nearest bfloat16 value (ties to even), as float32, when EXACT; x otherwise.
    On the bits: add half an ulp of bfloat16 (less one, plus the kept lowest bit, for ties to even)
    and drop the low 16 bits. Exact for zeros, subnormals and every finite value (NaN aside)."""
    if EXACT:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        x = bits.to(tl.float32, bitcast=True)
    return x
