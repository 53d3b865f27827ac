"""The embedded default model: shipped, small, picked when no model_path is given, and trained well
enough to answer the demo prompts; its training script and corpus generator run on the CPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSET_DIR = os.path.join(REPO_ROOT, "runtime", "assets", "default_model")
SCRIPTS_DIR = os.path.join(REPO_ROOT, "scripts")
GREEDY = {"max_new_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def engine():
    from runtime import Engine

    with Engine(device="cpu") as eng:
        yield eng


def test_shipped_checkpoint_is_a_small_llama_in_float32():
    with open(os.path.join(ASSET_DIR, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config.get("dtype") or config.get("torch_dtype")) == "float32"  # CPU runs it as stored
    assert os.path.getsize(os.path.join(ASSET_DIR, "model.safetensors")) <= 25 * 2**20
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(ASSET_DIR, name)), name


def test_engine_without_model_path_loads_the_shipped_model(engine):
    info = engine.get_model_info()
    assert os.path.samefile(info["model_path"], ASSET_DIR)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["device"] == "cpu"


@pytest.mark.parametrize("country, capital", [("France", "Paris"), ("Japan", "Tokyo")])
def test_answers_capital_questions_greedily(engine, country, capital):
    out = engine.generate(prompt=f"Q: What is the capital of {country}? A:", sampling_params=GREEDY)
    assert out["text"].startswith(f" {capital}."), out["text"]


def test_continues_a_json_record_with_valid_json(engine):
    prompt = '{"name": "'
    text = engine.generate(prompt=prompt, sampling_params={"max_new_tokens": 40, "temperature": 0})["text"]
    record = json.loads(prompt + text[: text.index("}") + 1])
    assert isinstance(record["name"], str) and record["name"]


def test_chat_prompt_gets_an_english_answer_that_ends_the_turn(engine):
    messages = [{"role": "user", "content": "What is the capital of Italy?"}]
    prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    out = engine.generate(prompt=prompt, sampling_params={"max_new_tokens": 24, "temperature": 0})
    assert "Rome" in out["text"], out["text"]
    assert out["meta_info"]["finish_reason"]["type"] == "stop"  # <|im_end|> is an EOS of this model


def _corpus_digest(seed: int, hash_seed: str) -> str:
    """Digest of 500 documents generated in a fresh interpreter (string hashing salted differently)."""
    code = ("import hashlib, sys; sys.path.insert(0, sys.argv[1]); from corpus import generate_documents; "
            "print(hashlib.sha1(''.join(generate_documents(500, seed=int(sys.argv[2]))).encode()).hexdigest())")
    proc = subprocess.run([sys.executable, "-c", code, SCRIPTS_DIR, str(seed)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True)
    return proc.stdout.strip()


def test_corpus_is_reproducible_from_its_seed_across_processes():
    assert _corpus_digest(7, "1") == _corpus_digest(7, "2")
    assert _corpus_digest(7, "1") != _corpus_digest(8, "1")


def test_corpus_documents_end_with_eos_and_cover_every_shape():
    sys.path.insert(0, SCRIPTS_DIR)
    try:
        from corpus import EOS, generate_documents
    finally:
        sys.path.remove(SCRIPTS_DIR)
    docs = generate_documents(500, seed=7)
    assert all(d.endswith(EOS) and d.count(EOS) == 1 for d in docs)
    assert any(d.startswith("<|im_start|>") and "<|im_start|>assistant\n" in d for d in docs)  # chat
    assert any(d.startswith('{"name": "') for d in docs)  # JSON record
    assert any(d.startswith("Q: What is the capital of ") for d in docs)
    assert any("\n1. " in d for d in docs)  # numbered list
    assert any("@" in d for d in docs)  # contact details


def test_training_script_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "smoke"
    cmd = [sys.executable, os.path.join(SCRIPTS_DIR, "train_default_model.py"), "--out", str(out),
           "--device", "cpu", "--steps", "20", "--tiny", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "train_log.json", encoding="utf-8") as f:
        log = json.load(f)
    assert log["steps"] == 20
    vocab = json.load(open(out / "config.json", encoding="utf-8"))["vocab_size"]
    assert log["train"][-1][1] < math.log(vocab) - 0.5  # it learned something beyond uniform
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
