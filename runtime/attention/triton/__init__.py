"""Our own Triton attention kernels over the paged KV pool.

kv_store.py writes a step's K/V into the pool, decode.py is split-KV ("flash-decoding") decode
attention, extend.py is causal prefill attention over [cached prefix + new tokens], backend.py
wires them behind BaseAttentionBackend as "triton". Every kernel also runs under
TRITON_INTERPRET=1 on CPU, which is how the tests check them against the torch reference.
"""
