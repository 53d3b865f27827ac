"""/v1/completions, /v1/chat/completions and /v1/models through the real `openai` client."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest
from transformers import AutoTokenizer

from tests.server.conftest import running_server
from tests.server.scripted_model import SCRIPT_TEXT

PROMPTS = ["Hello", "The cat sees a dog", "Q: What is paris? A:"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a city."}]


@pytest.fixture(scope="module")
def server(random_model):
    with running_server(random_model) as served:
        yield served


@pytest.fixture(scope="module")
def script_server(scripted_model):
    with running_server(scripted_model) as served:
        yield served


@pytest.fixture(scope="module")
def tokenizer(random_model):
    return AutoTokenizer.from_pretrained(random_model)


def _joined(chunks, index=0) -> str:
    return "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == index)


def _finish_reasons(chunks) -> dict:
    reasons = defaultdict(list)
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason is not None:
                reasons[choice.index].append(choice.finish_reason)
    return dict(reasons)


def _native(served, **body) -> dict:
    response = httpx.post(served.url + "/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------- streamed == whole
@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_stream_joins_to_the_non_streamed_greedy_text(server, prompt):
    client = server.openai()
    whole = client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0, stream=True))
    assert _joined(chunks) == whole.choices[0].text
    assert whole.choices[0].text == server.engine.generate(
        prompt=prompt, sampling_params={"max_new_tokens": 24, "temperature": 0})["text"]
    assert _finish_reasons(chunks) == {0: [whole.choices[0].finish_reason]}
    assert whole.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_joins_to_the_non_streamed_greedy_message(server):
    client = server.openai()
    whole = client.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, max_tokens=24, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert _finish_reasons(chunks) == {0: [whole.choices[0].finish_reason]}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_multibyte_characters_split_across_tokens_stream_intact(script_server, temperature):
    client = script_server.openai()
    # ignore_eos: the script repeats; 22 tokens = the 10-token script, EOS, the script, EOS
    kwargs = dict(model="m", prompt="Hello", max_tokens=22, temperature=temperature, seed=3,
                  extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, **kwargs))
    deltas = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert whole.choices[0].text == SCRIPT_TEXT * 2
    assert "".join(deltas) == whole.choices[0].text
    assert all("\ufffd" not in d for d in deltas), deltas  # never half a character
    assert "日" in deltas and "é" in deltas  # each released whole, after its last byte's token
    assert whole.usage.completion_tokens == 22


def test_chat_stream_of_multibyte_text(script_server):
    client = script_server.openai()
    whole = client.chat.completions.create(model="m", messages=CHAT, temperature=0)
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, temperature=0, stream=True))
    assert whole.choices[0].message.content == SCRIPT_TEXT
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SCRIPT_TEXT
    assert whole.choices[0].finish_reason == "stop"  # EOS
    assert _finish_reasons(chunks) == {0: ["stop"]}


# ------------------------------------------------------------------------------------------ usage
@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_usage_counts_prompt_and_output_tokens(server, tokenizer, prompt):
    response = server.openai().completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0)
    native = _native(server, text=prompt, sampling_params={"max_new_tokens": 12, "temperature": 0})
    assert native["text"] == response.choices[0].text
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert response.usage.completion_tokens == len(native["output_ids"])
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_usage_counts_the_templated_prompt(server, tokenizer):
    response = server.openai().chat.completions.create(model="m", messages=CHAT, max_tokens=5, temperature=0,
                                                       extra_body={"ignore_eos": True})
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert response.usage.prompt_tokens == len(tokenizer.encode(ids))
    assert response.usage.completion_tokens == 5


def test_stream_usage_arrives_in_a_final_chunk_when_asked(server):
    client = server.openai()
    kwargs = dict(model="m", prompt=PROMPTS[1], max_tokens=9, temperature=0, n=2)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


# ----------------------------------------------------------------------------------------- n, stop
def test_n_greedy_choices_are_identical_and_indexed(server):
    response = server.openai().completions.create(model="m", prompt=PROMPTS[0], max_tokens=8, temperature=0, n=3)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len({c.text for c in response.choices}) == 1


def test_batch_prompts_with_n_index_prompt_major(server):
    client = server.openai()
    response = client.completions.create(model="m", prompt=PROMPTS[:2], max_tokens=6, temperature=0, n=2)
    singles = [client.completions.create(model="m", prompt=p, max_tokens=6, temperature=0).choices[0].text
               for p in PROMPTS[:2]]
    assert [c.text for c in response.choices] == [singles[0], singles[0], singles[1], singles[1]]


def test_streamed_n_choices_interleave_and_match_the_non_streamed_ones(server):
    client = server.openai()
    kwargs = dict(model="m", prompt=PROMPTS[2], max_tokens=16, temperature=1.0, seed=11, n=3)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, **kwargs))
    for choice in whole.choices:
        assert _joined(chunks, choice.index) == choice.text
    assert _finish_reasons(chunks) == {c.index: [c.finish_reason] for c in whole.choices}
    assert len({c.text for c in whole.choices}) > 1  # sampled copies differ (seed + k each)


def test_stop_strings_end_the_text_before_the_match(script_server):
    client = script_server.openai()
    for stop, expected in (("日", "café "), ([" 🙂", "f"], "ca")):
        whole = client.completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0, stop=stop)
        chunks = list(client.completions.create(model="m", prompt="Hello", max_tokens=20, temperature=0, stop=stop,
                                                stream=True))
        assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "stop"
        assert _joined(chunks) == expected
        assert _finish_reasons(chunks) == {0: ["stop"]}


def test_max_tokens_ends_with_length(script_server):
    response = script_server.openai().chat.completions.create(model="m", messages=CHAT, max_completion_tokens=3)
    assert response.choices[0].message.content == "caf"
    assert response.choices[0].finish_reason == "length"


# --------------------------------------------------------------------------------------- logprobs
def test_completion_logprobs_equal_the_engines(server):
    client = server.openai()
    kwargs = dict(model="m", prompt=PROMPTS[1], max_tokens=8, temperature=0, logprobs=3)
    whole = client.completions.create(**kwargs)
    native = _native(server, text=PROMPTS[1], sampling_params={"max_new_tokens": 8, "temperature": 0},
                     return_logprob=True, top_logprobs_num=3)
    engine_lps = native["meta_info"]["output_token_logprobs"]
    got = whole.choices[0].logprobs
    assert got.token_logprobs == pytest.approx([lp for lp, _, _ in engine_lps], abs=1e-6)
    assert len(got.tokens) == len(native["output_ids"])
    for top, engine_top in zip(got.top_logprobs, native["meta_info"]["output_top_logprobs"]):
        assert max(top.values()) == pytest.approx(engine_top[0][0], abs=1e-6)
    chunks = list(client.completions.create(stream=True, **kwargs))
    streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(got.token_logprobs, abs=1e-6)


def test_chat_logprobs_equal_the_engines(server, tokenizer):
    client = server.openai()
    kwargs = dict(model="m", messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
                  extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs)
    ids = tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False))
    native = _native(server, input_ids=ids, sampling_params={"max_new_tokens": 6, "temperature": 0, "ignore_eos": True},
                     return_logprob=True, top_logprobs_num=2)
    content = whole.choices[0].logprobs.content
    assert [t.logprob for t in content] == pytest.approx([lp for lp, _, _ in native["meta_info"]["output_token_logprobs"]], abs=1e-6)
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [t.logprob for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert streamed == pytest.approx([t.logprob for t in content], abs=1e-6)


def test_echo_returns_the_prompt_with_its_logprobs(server, tokenizer):
    response = server.openai().completions.create(model="m", prompt=PROMPTS[1], max_tokens=0, echo=True, logprobs=1)
    logprobs = response.choices[0].logprobs
    assert response.choices[0].text == PROMPTS[1]
    assert len(logprobs.tokens) == len(tokenizer.encode(PROMPTS[1]))
    assert logprobs.token_logprobs[0] is None and all(lp < 0 for lp in logprobs.token_logprobs[1:])


# ------------------------------------------------------------------------------------------ seeds
def test_same_seed_same_text_different_seed_different_text(server):
    client = server.openai()

    def sample(seed):
        return client.completions.create(model="m", prompt=PROMPTS[0], max_tokens=16, temperature=1.0,
                                         seed=seed).choices[0].text

    assert sample(1234) == sample(1234)
    assert sample(1234) != sample(4321)


def test_token_id_prompts_are_accepted(server, tokenizer):
    client = server.openai()
    ids = tokenizer.encode(PROMPTS[0])
    by_ids = client.completions.create(model="m", prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model="m", prompt=PROMPTS[0], max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


# ------------------------------------------------------------------------------ models and formats
def test_models_lists_the_served_model(server):
    models = server.openai().models.list()
    assert [m.id for m in models.data] == [server.openai().completions.create(
        model="m", prompt="a", max_tokens=1).model]


def test_json_response_format_constrains_the_output(server):
    """response_format json_schema: the (random) model's output must parse and validate."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok", "n"]}
    client = server.openai()
    response = client.chat.completions.create(
        model="m", messages=CHAT, max_tokens=64, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)
