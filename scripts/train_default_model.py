"""Train the embedded default model (runtime/assets/default_model) from scratch, on a corpus this
script generates itself (scripts/corpus.py): a byte-level BPE tokenizer, then a small Llama.

    # the shipped model (one GPU, about 4 minutes of training):
    python scripts/train_default_model.py --out /tmp/default_model --seed 0 --time-budget 240
    # a smoke run on the CPU in seconds:
    python scripts/train_default_model.py --out /tmp/smoke --device cpu --steps 20 --tiny

Plain torch: AdamW, linear warm-up then cosine decay, bf16 autocast on the GPU (fp32 master weights,
saved in fp32). `--time-budget` times the first steps and then fixes the step count so the run ends
in about that many seconds; the chosen count is logged, and `--steps N` replays it exactly.
Output: an HF-format directory (config, safetensors, tokenizer, generation config) + train_log.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from corpus import EOS, generate_documents  # noqa: E402
from runtime.model.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS  # noqa: E402

# name → (vocab, hidden, layers, heads, kv heads, intermediate, context, docs, batch, peak lr)
SHAPES = {
    "full": dict(vocab_size=4096, hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=4,
                 intermediate_size=512, seq_len=1024, num_docs=1_000_000, batch_size=64, lr=2e-3),
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, seq_len=128, num_docs=3000, batch_size=8, lr=3e-3),
}
SAMPLE_PROMPTS = [
    "Q: What is the capital of France? A:",
    "The cat",
    '{"name": "',
    "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
    "Shopping list:\n1.",
    "Q: Can a duck fly? A:",
    "Contact Alice at",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (HF format)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--tiny", action="store_true", help="a toy shape for smoke runs")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --time-budget)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training; sets the step count")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of --steps, at most 200; 200 with --time-budget)")
    p.add_argument("--eval-every", type=int, default=250)
    for key, value in SHAPES["full"].items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None, help=f"default {value}")
    args = p.parse_args(argv)
    shape = SHAPES["tiny" if args.tiny else "full"]
    for key, value in shape.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps is None and args.time_budget is None:
        p.error("give --steps or --time-budget")
    return args


# ---------------------------------------------------------------------- tokenizer and data
def train_tokenizer(docs: list[str], vocab_size: int, out_dir: str):
    """Byte-level BPE on the corpus (special tokens stripped from the text), saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def plain(doc: str) -> str:
        for special in SPECIAL_TOKENS:
            doc = doc.replace(special, "\n")
        return doc

    tok.train_from_iterator((plain(d) for d in docs), trainer=trainer, length=len(docs))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def encode(tokenizer, docs: list[str], seed: int, split_fraction: float = 0.1, chunk: int = 1000):
    """All documents as one token stream; returns (ids int64 [num_tokens], doc start offsets).

    Most documents are encoded in chunks of `chunk`: EOS is a special token, so the text on either
    side of it is tokenized independently and a chunk gives the same ids as its documents one by one.
    A `split_fraction` of them is cut after a random space and the halves tokenized apart, so the
    model also sees a lone space token followed by a word without its space: that is what a prompt
    ending in a space ("A: ") looks like, and the demos write such prompts.
    """
    import torch

    rng = random.Random(seed)
    is_split = [rng.random() < split_fraction for _ in docs]
    whole = [d for d, s in zip(docs, is_split) if not s]
    texts = ["".join(whole[i : i + chunk]) for i in range(0, len(whole), chunk)]
    for doc in (d for d, s in zip(docs, is_split) if s):
        cuts = [m.end() for m in re.finditer(r" (?=[^\s<])", doc)] or [len(doc)]
        cut = rng.choice(cuts)
        texts += [doc[:cut], doc[cut:]]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = torch.cat([torch.tensor(e.ids, dtype=torch.int64) for e in encodings])
    ends = torch.nonzero(ids == tokenizer.eos_token_id).flatten() + 1
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), ends[:-1]])
    return ids, starts


class Batches:
    """Random windows of seq_len + 1 tokens that each begin at a document start, so position 0 is
    always a document's first token, as it is for a prompt at inference time."""

    def __init__(self, ids, starts, seq_len: int, batch_size: int, seed: int, device):
        import torch

        self.ids = ids.to(device)
        self.starts = starts[starts + seq_len + 1 <= len(ids)].to(device)
        self.offsets = torch.arange(seq_len + 1, device=device)
        self.batch_size = batch_size
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def next(self):
        import torch

        pick = torch.randint(len(self.starts), (self.batch_size,), generator=self.generator)
        windows = self.ids[self.starts[pick.to(self.starts.device)][:, None] + self.offsets]  # [B, T+1]
        return windows[:, :-1], windows[:, 1:]


# ---------------------------------------------------------------------- model and optimisation
def build_model(args, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads, head_dim=args.hidden_size // args.num_heads,
        max_position_embeddings=args.seq_len, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.02, dtype="float32",
    )
    return LlamaForCausalLM(config)


def make_optimizer(model, lr: float, device):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # norm scales
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def loss_on(model, inputs, targets, device):
    import torch

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(input_ids=inputs).logits  # [B, T, V]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def evaluate(model, batches: list, device) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [loss_on(model, x, y, device).item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------- the run
def train(args, model, data: Batches, val: list, device) -> dict:
    """The optimisation loop; returns the log (loss curve, steps, tokens, seconds)."""
    optimizer = make_optimizer(model, args.lr, device)
    total = args.steps or 10**9  # fixed by the calibration when only a time budget is given
    warmup = args.warmup if args.warmup is not None else min(200, max(1, (args.steps or 4000) // 20))
    log = {"train": [], "val": []}
    start = time.perf_counter()
    step, tokens, mark = 0, 0, None
    while step < total:
        if step == CALIBRATE[0]:
            _sync(device)
            mark = time.perf_counter()
        if args.steps is None and step == CALIBRATE[1]:
            total = _plan_steps(args.time_budget, start, mark, step, device)
        if args.time_budget and time.perf_counter() - start > 1.25 * args.time_budget:
            print(f"stopping at step {step}: over the time budget", flush=True)  # a safety net only
            break
        loss = _train_step(model, optimizer, data, lr_at(step, total, warmup, args.lr), device)
        step += 1
        tokens += args.batch_size * args.seq_len
        if step % 50 == 0 or step == total:
            log["train"].append((step, round(loss.item(), 4)))
        if step % args.eval_every == 0 or step == total:
            log["val"].append((step, round(evaluate(model, val, device), 4)))
            elapsed = time.perf_counter() - start
            print(f"step {step}/{total if total < 10**9 else '?'} train {loss.item():.4f} val {log['val'][-1][1]:.4f} "
                  f"{tokens / elapsed:,.0f} tok/s {elapsed:.0f}s", flush=True)
    if not log["val"] or log["val"][-1][0] != step:  # stopped early by the safety net
        log["train"].append((step, round(loss.item(), 4)))
        log["val"].append((step, round(evaluate(model, val, device), 4)))
    log.update(steps=step, tokens_seen=tokens, train_seconds=round(time.perf_counter() - start, 1), warmup=warmup)
    return log


CALIBRATE = (20, 70)  # steps timed to fix the step count (past CUDA start-up and allocator warm-up)


def _plan_steps(time_budget: float, start: float, mark: float, step: int, device) -> int:
    _sync(device)
    per_step = (time.perf_counter() - mark) / (CALIBRATE[1] - CALIBRATE[0]) * 1.04  # + evaluations
    total = max(step + 1, int((time_budget - (time.perf_counter() - start)) / per_step) + step)
    print(f"calibrated: {per_step * 1e3:.1f} ms/step -> {total} steps", flush=True)
    return total


def _train_step(model, optimizer, data: Batches, lr: float, device):
    import torch

    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = data.next()
    loss = loss_on(model, inputs, targets, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def save(model, tokenizer, out_dir: str) -> None:
    from transformers import GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=[tokenizer.eos_token_id, im_end], do_sample=False)
    model.to("cpu").float().save_pretrained(out_dir, safe_serialization=True)


def samples(model, tokenizer, max_new_tokens: int = 24) -> dict:
    """Greedy completions of SAMPLE_PROMPTS with HF generate, for the log."""
    import torch

    model.eval()
    out = {}
    for prompt in SAMPLE_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        out[prompt] = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)
        print(f"{prompt!r} -> {out[prompt]!r}", flush=True)
    return out


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    docs = generate_documents(args.num_docs, seed=args.seed)
    val_docs = generate_documents(max(200, args.num_docs // 200), seed=args.seed + 10_000)  # unseen draws
    tokenizer = train_tokenizer(docs[:200_000], args.vocab_size, args.out)
    ids, starts = encode(tokenizer, docs, seed=args.seed)
    val_ids, val_starts = encode(tokenizer, val_docs, seed=args.seed + 1)
    print(f"corpus: {len(docs):,} docs, {len(ids):,} tokens, vocab {len(tokenizer)}; "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    data = Batches(ids, starts, args.seq_len, args.batch_size, args.seed, device)
    val_data = Batches(val_ids, val_starts, args.seq_len, args.batch_size, args.seed + 1, device)
    val = [val_data.next() for _ in range(8)]
    model = build_model(args, tokenizer).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"model: {num_params:,} parameters on {device}", flush=True)
    log = train(args, model, data, val, device)
    save(model, tokenizer, args.out)
    log.update(samples=samples(model, tokenizer), num_params=num_params, num_docs=len(docs),
               corpus_tokens=len(ids), args=vars(args), device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               torch=torch.__version__, total_seconds=round(time.perf_counter() - t0, 1))
    with open(os.path.join(args.out, "train_log.json"), "w", encoding="utf-8") as f:
        json.dump(log, f, indent=1)
    print(f"saved to {args.out}: final train {log['train'][-1][1]} val {log['val'][-1][1]}; "
          f"{log['total_seconds']}s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
