"""GPU benchmark for issue 6: correctness first, then speed, on a Llama-3-8B-shaped dummy model (bf16).

    python benchmarks/bench_gpu.py --out $OUT [--quick] [--sections a,b,...]

Sections (each independent; a failure is recorded and the script goes on):
  env        versions, card, measured copy bandwidth and bf16 matmul rate
  small      greedy tokens equal to HF on a small fp32 model, for every attention backend, pool whole
  logits     first-step logits of our 8B-shaped model vs HF's on the same random weights
  decode     batch-1 decode at 1k context: tokens/s and fraction of the memory roofline (graphs on/off)
  offline    1,000 requests, inputs U[256,1024], outputs U[64,512], ignore_eos: output tokens/s
  prefix     256 requests, shared 2,000-token prefix + 64 unique, 32 out: radix cache on vs off
  json       JSON-schema-constrained decoding at batch 64 vs unconstrained (short and long outputs)
  hfworkload our engine on exactly what HF generate_batch ran (n requests, 512 tokens each)
  memory     KV capacity, and whether decode allocates new device memory per step
  offline_fp8, offline_fp8w, offline_fp8w_kv   offline and batch-1 decode with the lossy options:
             the fp8 KV cache, fp8 weights (quantization="fp8"), and both
  offline_cublas_mlp   offline and batch-1 decode with the MLP's gate_up product on cuBLAS + silu·mul
             at every batch size (disable_gated_matmul): the A/B for the fused gated product
  flashinfer the FlashInfer backend end to end on the 8B shape: agreement with Triton, decode, offline
  hf         HF transformers baselines on the same shape (generate b=1; generate_batch)
Prints a compact table last; writes results.json and log lines to --out.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

RESULTS: dict = {}
LLAMA3_8B = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
    max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2, hidden_act="silu",
)


OUT_DIR: list[str] = []  # set by main() from --out


def section(name, fn, *args):
    start = time.time()
    try:
        RESULTS[name] = fn(*args)
    except Exception as exc:  # each section stands alone
        traceback.print_exc()
        RESULTS[name] = f"FAILED: {type(exc).__name__}: {str(exc)[:400]}"
    print(f"[{name}] {time.time() - start:.1f}s -> {json.dumps(RESULTS[name], default=str)[:1500]}", flush=True)
    if OUT_DIR:  # after every section: a run cut short by the device's time limit keeps what it measured
        os.makedirs(OUT_DIR[0], exist_ok=True)
        with open(os.path.join(OUT_DIR[0], "results.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


def model_dir(workdir: str) -> str:
    from runtime.model.tiny import build_tokenizer

    path = os.path.join(workdir, "llama3-8b-dummy")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(LLAMA3_8B, f)
    build_tokenizer(path)  # any tokenizer: the benchmarks send token ids
    return path


def free_memory():
    gc.collect()
    torch.cuda.empty_cache()


# ------------------------------------------------------------------ sections
def env():
    import transformers
    import triton

    p = torch.cuda.get_device_properties(0)
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    copy_bw = 2 * 2**30 * 20 / (time.perf_counter() - t)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    tflops = 2 * 8192**3 * 20 / (time.perf_counter() - t) / 1e12
    del x, y, a
    free_memory()
    return dict(gpu=p.name, sms=p.multi_processor_count, mem_gib=round(p.total_memory / 2**30, 1),
                torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
                copy_tb_s=round(copy_bw / 1e12, 3), matmul_tflops=round(tflops, 1))


def decode_b1(engine, copy_tb_s):
    ids = torch.randint(100, 120000, (1024,)).tolist()
    params = {"max_new_tokens": 256, "temperature": 0, "ignore_eos": True}
    rates = {}
    graphs = engine.runner.cuda_graph
    variants = (("cuda_graph", graphs, True), ("cuda_graph_no_overlap", graphs, False), ("eager", None, True))
    for label, graph, overlap in variants:
        engine.runner.cuda_graph = graph
        engine.scheduler.overlap = overlap  # read once per step; the engine is idle here
        engine.generate(input_ids=ids, sampling_params={**params, "max_new_tokens": 8})
        out = engine.generate(input_ids=ids, sampling_params=params)
        meta = out["meta_info"]
        rates[label] = (len(out["output_ids"]) - 1) / (meta["e2e_latency"] - meta["ttft"])
        engine.flush_cache()
    engine.runner.cuda_graph = graphs
    engine.scheduler.overlap = True
    if graphs is not None:  # the GPU time of one step alone: what the host adds is the difference
        graph = graphs.graphs[1]
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(50):
            graph.replay()
        torch.cuda.synchronize()
        rates["graph_replay_only"] = 50 / (time.perf_counter() - t)
        engine.flush_cache()  # the replays rewrote a slot the cache may hold
    model = engine.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    mc = engine.runner.model_config
    kv_bytes = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 2 * (1024 + 128)
    ideal_s = (weight_bytes + kv_bytes) / (copy_tb_s * 1e12)
    return {f"{k}_tok_s": round(v, 1) for k, v in rates.items()} | {
        "roofline_fraction": round(rates["cuda_graph"] * ideal_s, 3), "weight_gb": round(weight_bytes / 1e9, 2)}


def offline_variant(path, n, copy_tb_s, **options):
    """The offline workload and batch-1 decode on an engine with lossy options: kv_cache_dtype="fp8_e4m3"
    (twice the pool, half the decode attention traffic) or quantization="fp8" (fp8 matmuls). Their
    accuracy is measured in the logits section."""
    from runtime import Engine

    engine = Engine(model_path=path, load_format="dummy", **options)
    try:
        res = dict(options=options, kv_capacity_tokens=engine.max_total_tokens,
                   max_running_requests=engine.config.max_running_requests)
        res["offline"] = offline(engine, n)
        res["decode_b1_1k"] = decode_b1(engine, copy_tb_s)
        engine.check_integrity()
    finally:
        engine.shutdown()
        del engine
        free_memory()
    return res


LOSSY_VARIANTS = {  # section name → engine options
    "offline_fp8": dict(kv_cache_dtype="fp8_e4m3"),
    "offline_fp8w": dict(quantization="fp8"),
    "offline_fp8w_kv": dict(quantization="fp8", kv_cache_dtype="fp8_e4m3"),
}


AB_VARIANTS = {  # section name → engine options: the default engine without one of its choices
    "offline_cublas_mlp": dict(disable_gated_matmul=True),  # gate_up on cuBLAS + silu·mul at every batch size
}


def workload(n, seed=0):
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        reqs.append(([rng.randint(100, 120000) for _ in range(rng.randint(256, 1024))], rng.randint(64, 512)))
    return reqs


def offline(engine, n):
    reqs = workload(n)
    engine.flush_cache()
    seg0 = torch.cuda.memory_stats()["segment.all.allocated"]
    start = time.perf_counter()
    outs = engine.generate(input_ids=[r[0] for r in reqs],
                           sampling_params=[{"max_new_tokens": m, "temperature": 0, "ignore_eos": True} for _, m in reqs])
    seconds = time.perf_counter() - start
    tokens = sum(len(o["output_ids"]) for o in outs)
    RESULTS["_segments_during_offline"] = torch.cuda.memory_stats()["segment.all.allocated"] - seg0
    result = dict(requests=n, output_tokens=tokens, seconds=round(seconds, 1), output_tok_s=round(tokens / seconds, 1),
                  retractions=engine.get_stats()["num_retractions"])
    # steady state: the same kind of work again must not grow device memory (no cudaMalloc per step)
    sub = reqs[: max(n // 5, 8)]
    for overlap in (False, True):
        engine.scheduler.overlap = overlap
        engine.flush_cache()
        stats0 = torch.cuda.memory_stats()
        start = time.perf_counter()
        outs = engine.generate(input_ids=[r[0] for r in sub],
                               sampling_params=[{"max_new_tokens": m, "temperature": 0, "ignore_eos": True} for _, m in sub])
        rate = sum(len(o["output_ids"]) for o in outs) / (time.perf_counter() - start)
        stats1 = torch.cuda.memory_stats()
        key = "overlap_on" if overlap else "overlap_off"
        result[f"subset_{len(sub)}_{key}_tok_s"] = round(rate, 1)
        RESULTS[f"_steady_{key}"] = dict(
            new_segments=stats1["segment.all.allocated"] - stats0["segment.all.allocated"],
            reserved_growth_mib=round((stats1["reserved_bytes.all.current"] - stats0["reserved_bytes.all.current"]) / 2**20, 1))
    return result


def offline_hf_workload(engine, n):
    """HF's generate_batch takes one generation config for the whole batch, so in its run every
    request generates the largest budget (512). The same requests with the same 512 tokens each,
    here: the like-for-like comparison with the HF figure."""
    reqs = workload(n)
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(input_ids=[r[0] for r in reqs],
                           sampling_params={"max_new_tokens": 512, "temperature": 0, "ignore_eos": True})
    seconds = time.perf_counter() - start
    tokens = sum(len(o["output_ids"]) for o in outs)
    return dict(requests=n, output_tokens=tokens, seconds=round(seconds, 1), output_tok_s=round(tokens / seconds, 1))


def shared_prefix(engine, n=256):
    rng = random.Random(1)
    prefix = [rng.randint(100, 120000) for _ in range(2000)]
    prompts = [prefix + [rng.randint(100, 120000) for _ in range(64)] for _ in range(n)]
    engine.flush_cache()
    start = time.perf_counter()
    outs = engine.generate(input_ids=prompts, sampling_params={"max_new_tokens": 32, "temperature": 0, "ignore_eos": True})
    seconds = time.perf_counter() - start
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    optimum = (n - 1) * len(prefix)  # every request but the first could reuse the whole prefix
    return dict(seconds=round(seconds, 2), req_s=round(n / seconds, 1), cached_tokens=cached,
                hit_fraction_of_optimum=round(cached / optimum, 3))


JSON_SCHEMAS = {
    # short fields: most outputs complete (and leave the batch) before the 48-token budget
    "short": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
              "age": {"type": "integer"}, "city": {"type": "string", "maxLength": 12}}, "required": ["name", "age", "city"]},
    # a long required string: every request decodes the whole budget, so the batch stays at 64 and
    # the ratio isolates what the constraint costs per step
    "long": {"type": "object", "properties": {"story": {"type": "string", "minLength": 400}}, "required": ["story"]},
}


def json_constrained(engine, n=64, schema="short"):
    rng = random.Random(2)
    prompts = [[rng.randint(100, 120000) for _ in range(128)] for _ in range(n)]
    free = {"max_new_tokens": 48, "temperature": 0, "ignore_eos": True}
    constrained = {**free, "json_schema": json.dumps(JSON_SCHEMAS[schema]), "ignore_eos": False}
    res = {}
    engine.generate(input_ids=prompts, sampling_params=free)  # warm: first-use costs out of the timing
    for label, params in (("unconstrained", free), ("json_schema", constrained)):
        engine.generate(input_ids=prompts[:2], sampling_params=params)
        start = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        seconds = time.perf_counter() - start
        tokens = sum(len(o["output_ids"]) for o in outs)
        res[label] = dict(tokens=tokens, tok_s=round(tokens / seconds, 1))
        if label == "json_schema":
            valid = 0
            for o in outs:
                try:
                    json.loads(o["text"]); valid += 1
                except ValueError:
                    pass
            res["valid_json"] = f"{valid}/{n}"
    res["ratio"] = round(res["json_schema"]["tok_s"] / res["unconstrained"]["tok_s"], 3)
    res["jump_forward_tokens"] = sum(o["meta_info"]["jump_forward_tokens"] for o in outs)
    return res


def print_table():
    rows = []
    env_info = RESULTS.get("env", {})
    if isinstance(env_info, dict):
        rows.append(("card", f"{env_info.get('gpu')} copy {env_info.get('copy_tb_s')} TB/s, {env_info.get('matmul_tflops')} TFLOP/s"))
    for key, value in RESULTS.items():
        if key != "env":
            rows.append((key, json.dumps(value, default=str)))
    print("\n| section | result |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--sections", default="env,small,logits,decode,offline,prefix,json,memory,hfworkload,offline_fp8,offline_fp8w,offline_fp8w_kv,flashinfer,hf")
    parser.add_argument("--hf-requests", type=int, default=256, help="requests given to HF generate_batch")
    parser.add_argument("--hf-impls", default="sdpa,paged|sdpa", help="attn_implementation values for generate_batch")
    args = parser.parse_args()
    wanted = set(args.sections.split(","))
    if args.out:
        OUT_DIR.append(args.out)
    workdir = tempfile.mkdtemp()
    path = model_dir(workdir)
    n_offline, n_prefix, n_hf = (100, 32, 8) if args.quick else (1000, 256, args.hf_requests)
    if "env" in wanted:
        section("env", env)
    copy_tb_s = RESULTS.get("env", {}).get("copy_tb_s", 3.0) if isinstance(RESULTS.get("env"), dict) else 3.0
    if "small" in wanted:
        from benchmarks.gpu_agreement import small

        section("small", small, workdir)
    if wanted & {"decode", "offline", "prefix", "json", "memory", "hfworkload"}:
        from runtime import Engine

        start = time.perf_counter()
        engine = Engine(model_path=path, load_format="dummy")
        RESULTS["engine_start_s"] = round(time.perf_counter() - start, 1)
        RESULTS["kv_capacity_tokens"] = engine.max_total_tokens
        RESULTS["gated_routes"] = {str(k): str(v) for k, v in engine.runner.gated_routes.items()}
        if "decode" in wanted:
            section("decode_b1_1k", decode_b1, engine, copy_tb_s)
        if "offline" in wanted:
            section("offline", offline, engine, n_offline)
        if "prefix" in wanted:
            section("prefix_radix_on", shared_prefix, engine, n_prefix)
        if "json" in wanted:
            section("json_b64", json_constrained, engine)
            section("json_b64_long", json_constrained, engine, 64, "long")
        if "hfworkload" in wanted:
            section("offline_hf_workload", offline_hf_workload, engine, n_hf)
        if "memory" in wanted:
            section("memory", lambda: dict(kv_capacity_tokens=engine.max_total_tokens,
                                            new_segments_first_offline_run=RESULTS.get("_segments_during_offline"),
                                            steady_state_overlap_on=RESULTS.get("_steady_overlap_on"),
                                            steady_state_overlap_off=RESULTS.get("_steady_overlap_off"),
                                            matmul_routes={str(k): str(v) for k, v in engine.runner.matmul_routes.items()},
                                            allocated_gib=round(torch.cuda.memory_allocated() / 2**30, 1)))
        engine.check_integrity()
        engine.shutdown()
        del engine
        free_memory()
        for name, options in (LOSSY_VARIANTS | AB_VARIANTS).items():
            if name in wanted:
                section(name, functools.partial(offline_variant, **options), path, n_offline, copy_tb_s)
        if "prefix" in wanted:
            off = Engine(model_path=path, load_format="dummy", disable_radix_cache=True)
            section("prefix_radix_off", shared_prefix, off, n_prefix)
            off.shutdown()
            del off
            free_memory()
            on, off_ = RESULTS.get("prefix_radix_on"), RESULTS.get("prefix_radix_off")
            if isinstance(on, dict) and isinstance(off_, dict):
                RESULTS["prefix_speedup"] = round(off_["seconds"] / on["seconds"], 2)
    from benchmarks.gpu_agreement import flashinfer_e2e, logits

    if "flashinfer" in wanted:
        section("flashinfer", flashinfer_e2e, path, copy_tb_s)
    if "logits" in wanted:
        section("logits", logits, path)
    if "hf" in wanted:
        from benchmarks.hf_baseline import hf_baselines

        section("hf", hf_baselines, path, n_hf, tuple(args.hf_impls.split(",")))
        hf = RESULTS.get("hf")
        best = max([v for k, v in hf.items() if k.startswith("generate_batch") and isinstance(v, float)] or [0]) if isinstance(hf, dict) else 0
        for key in ("offline", "offline_hf_workload"):
            ours = RESULTS.get(key)
            if best and isinstance(ours, dict):
                RESULTS[f"{key}_vs_hf_generate_batch"] = round(ours["output_tok_s"] / best, 1)
    print_table()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    main()
