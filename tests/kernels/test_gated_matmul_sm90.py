"""The gated product's launch shapes compiled for sm_90 on the CPU (no GPU needed): each one that
start-up may time must build for a Hopper card with its loads software-pipelined (asynchronous copies
in flight, not loads waited for one by one), its products on the warpgroup tensor-core instructions,
its pipeline in the shared memory `GatedConfig.shared_bytes` accounts for, and no register spills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMPILE = textwrap.dedent("""
    import json, os, re, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from runtime.model.gated_matmul import CANDIDATES, _silu_mul_matmul_kernel as fn

    # what a launch on the engine's tensors specialises: 16-byte aligned pointers, and sizes and row
    # strides that are multiples of 16 (M is never specialised)
    ALIGNED = ("x_ptr", "w_ptr", "y_ptr", "I", "K", "stride_xm", "stride_wn", "stride_ym")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
    found = []
    for c in CANDIDATES:
        sig = dict(x_ptr="*bf16", w_ptr="*bf16", y_ptr="*bf16", M="i32", I="i32", K="i32", stride_xm="i32",
                   stride_wn="i32", stride_ym="i32",
                   w_desc=f"tensordesc<bf16[{c.block_n}, {c.block_k}]>" if c.tma else "*bf16",
                   x_desc=f"tensordesc<bf16[{c.block_m}, {c.block_k}]>" if c.tma else "*bf16")
        consts = dict(BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m, TMA=c.tma,
                      WARP_SPECIALIZE=c.warp_specialize, DOT_PRECISION="tf32", EXACT=False)
        sig.update({name: "constexpr" for name in consts})
        names = list(fn.arg_names)
        aligned = ALIGNED + (() if c.tma else ("w_desc", "x_desc"))
        attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
        kernel = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": c.num_warps, "num_stages": c.num_stages})
        ptx = kernel.asm["ptx"]
        spills = None
        if os.path.exists(ptxas):
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(ptx)
            done = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                spills = sum(int(n) for n in re.findall(r"(\\d+) bytes spill", done.stderr))
        found.append(dict(config=str(c), tma=c.tma, shared=kernel.metadata.shared, expected=c.shared_bytes(2),
                          async_copies=ptx.count("cp.async.cg.shared.global"),
                          bulk_copies=ptx.count("cp.async.bulk.tensor"), wgmma=ptx.count("wgmma.mma_async"),
                          spills=spills))
    print(json.dumps(found))
""")


def test_every_candidate_builds_pipelined_for_sm90_within_shared_memory_and_registers():
    from runtime.triton_interpreter import CPU_SHARED_MEMORY

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for found in json.loads(done.stdout.splitlines()[-1]):
        name = found["config"]
        assert found["wgmma"] > 0, name
        if found["tma"]:
            assert found["bulk_copies"] > 0, name  # the weight through the copy engine
        else:
            assert found["async_copies"] > 0, name  # cp.async: tiles in flight while the product runs
        assert found["expected"] <= found["shared"] <= found["expected"] + 256, name
        assert found["shared"] <= CPU_SHARED_MEMORY, name  # a Hopper card's opt-in limit
        assert found["spills"] in (0, None), name  # None: no ptxas for sm_90a here to count them
