import sys, os, tempfile, torch
sys.path.insert(0, os.getcwd())
from runtime.model.tiny import build_tiny_model
from tests.gpu.test_deterministic_on_gpu import _outputs
path = build_tiny_model(tempfile.mkdtemp(), arch="llama", hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=4,
                        intermediate_size=2816, max_position_embeddings=2048)
gen = torch.Generator().manual_seed(0)
prompts = [torch.randint(10, 300, (n,), generator=gen).tolist() for n in (5, 40, 130, 300, 17, 64, 250, 90)]
base = _outputs(path, prompts)
def cmp(name, other):
    for part, (x, y) in zip(("batched", "alone"), zip(base[:2], other[:2])):
        print(name, part, "tokens differ:", [i for i, (a, b) in enumerate(zip(x, y)) if a[0] != b[0]],
              "logprobs differ:", [i for i, (a, b) in enumerate(zip(x, y)) if a[1] != b[1]], flush=True)
    print(name, "second turn equal:", base[2] == other[2], flush=True)
cmp("eager", _outputs(path, prompts, disable_cuda_graph=True))
cmp("chunk48", _outputs(path, prompts, chunked_prefill_size=48))
cmp("nocache", _outputs(path, prompts, disable_radix_cache=True))
