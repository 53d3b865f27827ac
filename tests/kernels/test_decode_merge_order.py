"""The memory order of the decode kernel's in-place merge, read from its sm_90 PTX (compiled on the
CPU, no GPU needed). The interpreter runs programs one after another, and a GPU run would pass a
weaker order by luck, so the order is checked where the compiler puts it: every thread's partial
stores, a barrier, one acquire-release ticket, the ticket shared through shared memory behind a
barrier, and only then the L2 loads of the other splits' parts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COMPILE = textwrap.dedent("""
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from runtime.attention.triton.decode import _decode_split_kernel as fn

    pointers = dict(q_ptr="*bf16", k_buffer_ptr="*bf16", v_buffer_ptr="*bf16", table_ptr="*i32", row_ptr="*i64",
                    seq_lens_ptr="*i32", mid_o_ptr="*fp32", mid_lse_ptr="*fp32", o_ptr="*bf16", k_new_ptr="*bf16",
                    v_new_ptr="*bf16", cos_ptr="*fp32", sin_ptr="*fp32", loc_ptr="*i64", arrivals_ptr="*i32",
                    scale_log2="fp32")
    consts = dict(GROUP=4, HEAD_DIM=128, BLOCK_H=16, BLOCK_D=128, BLOCK_N=64, DOT_PRECISION="tf32", PDL=False,
                  SINGLE_SPLIT=False, KV_VIA_F32=False, ROPE=sys.argv[1] == "rope", QK_EXACT=False, EXACT=False,
                  MANT_BITS=3, MIN_EXP=-6, MERGE_HERE=True, BLOCK_G=4, CHUNK_S=16,
                  OWN_MIN_LEN=256 if sys.argv[1] == "by_length" else 0, OWN_MAX=16)
    signature = {name: pointers.get(name, "constexpr" if name in consts else "i32") for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, signature, consts, {}), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": 4, "num_stages": 2})
    sys.stdout.write(kernel.asm["ptx"])
""")


def _ptx(variant: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiler, not the interpreter
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", COMPILE, variant], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("variant", ["plain", "rope", "by_length"])  # by_length: LengthSplits (deterministic)
def test_the_last_split_reads_the_others_parts_only_after_an_acquire_release_ticket(variant):
    lines = [line.strip() for line in _ptx(variant).splitlines()]

    def where(predicate):
        return [i for i, line in enumerate(lines) if predicate(line)]

    tickets = where(lambda line: "atom.global.gpu.acq_rel.add" in line)
    assert len(tickets) == 1, "one acquire-release ticket per program"
    ticket = tickets[0]
    assert "@%p" in lines[ticket], "one thread takes the ticket"
    barriers = where(lambda line: line.startswith("bar.sync"))
    partial_stores = where(lambda line: line.startswith(("st.global", "@%p")) and "st.global" in line)
    # every thread's partial results are stored, then a barrier, then the ticket
    stores_before = [i for i in partial_stores if i < ticket]
    assert stores_before, "the partial results are stored before the ticket"
    assert any(stores_before[-1] < b < ticket for b in barriers), "a barrier between the stores and the ticket"
    # the ticket reaches the other threads through shared memory behind a barrier; the parts load after it
    shared = [i for i in where(lambda line: "st.shared" in line) if i > ticket]
    assert shared and any(shared[0] < b for b in barriers), "the ticket is shared behind a barrier"
    after = min(b for b in barriers if b > shared[0])
    merge_loads = [i for i in where(lambda line: "ld.global.cg" in line) if i > ticket]
    assert merge_loads and min(merge_loads) > after, "the merge loads come after the shared ticket"
    assert not [i for i in where(lambda line: "ld.global" in line and ".cg" not in line and "ld.global.nc" not in line)
                if i > ticket], "the merge reads the parts through L2 only"
    resets = where(lambda line: "atom.global.gpu.relaxed.exch" in line)
    assert len(resets) == 1 and resets[0] > ticket, "the counter is set back to zero after the ticket"
