"""Constrained decoding through the Engine: a random tiny model (which would never produce valid
output by chance) always produces output that matches its regex / schema / choices, with
jump-forward on and off; bad specs fail clearly; the KV pool stays whole."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tests.integration.engine_helpers import checked_engine

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
}
REGEXES = [r"\d{4}-\d{2}-\d{2}", r"(yes|no)", r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)", r"-?\d+(\.\d{1,3})?"]
SEEDS = range(6)


@pytest.fixture(scope="module", params=[False, True], ids=["jump_forward", "no_jump_forward"])
def engine(request, tiny_model_dir):
    with checked_engine(model_path=tiny_model_dir("llama"), dtype="float32", disable_jump_forward=request.param) as eng:
        yield eng


def _sampled(seed, **constraint):
    return {"max_new_tokens": 96, "temperature": 1.0, "seed": seed, **constraint}


def test_every_output_matches_its_regex(engine):
    prompts, params = [], []
    for pattern in REGEXES:
        for seed in SEEDS:
            prompts.append("Answer:")
            params.append(_sampled(seed, regex=pattern))
    outs = engine.generate(prompt=prompts, sampling_params=params)
    for p, out in zip(params, outs):
        assert re.fullmatch(p["regex"], out["text"]), (p["regex"], out["text"])
        assert out["meta_info"]["finish_reason"]["type"] == "stop"


def test_every_output_validates_against_its_schema(engine):
    outs = engine.generate(prompt=["Record:"] * len(SEEDS),
                           sampling_params=[_sampled(s, json_schema=json.dumps(SCHEMA)) for s in SEEDS])
    for out in outs:
        jsonschema.validate(json.loads(out["text"]), SCHEMA)


def test_jump_forward_skips_forced_keys(engine):
    out = engine.generate(prompt="Record:", sampling_params=_sampled(0, json_schema=json.dumps(SCHEMA)))
    if engine.config.disable_jump_forward:
        assert out["meta_info"]["jump_forward_tokens"] == 0
    else:
        assert out["meta_info"]["jump_forward_tokens"] > 0  # '{"name":"' etc. were not sampled


def test_choices_return_one_of_them(engine):
    choices = ["red", "green", "blue sky"]
    outs = engine.generate(prompt=["Colour:"] * len(SEEDS), sampling_params=[_sampled(s, choices=choices) for s in SEEDS])
    assert all(o["text"] in choices for o in outs)


def test_unconstrained_neighbours_are_unaffected(engine):
    greedy = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    alone = engine.generate(prompt="The cat", sampling_params=greedy)
    mixed = engine.generate(prompt=["The cat", "Date:"], sampling_params=[greedy, _sampled(1, regex=REGEXES[0])])
    assert mixed[0]["output_ids"] == alone["output_ids"]


@pytest.mark.parametrize(
    "constraint, words",
    [({"regex": "(unclosed"}, ["regex"]), ({"json_schema": "{not json"}, ["json_schema"]),
     ({"json_schema": json.dumps({"type": "no-such-type"})}, ["no-such-type"])],
)
def test_invalid_spec_is_a_clear_error_and_the_engine_keeps_serving(engine, constraint, words):
    with pytest.raises(ValueError) as info:
        engine.generate(prompt="x", sampling_params={"max_new_tokens": 4, **constraint})
    assert any(w in str(info.value) for w in words), str(info.value)
    assert engine.generate(prompt="ok", sampling_params={"max_new_tokens": 2})["meta_info"]["completion_tokens"] >= 1


def test_jump_forward_waits_until_few_requests_decode(tiny_model_dir):
    """With jump_forward_max_batch=1 a request jumps only while it decodes alone (a jump's extend
    step would stall the others); the output is valid either way."""
    schema = json.dumps(SCHEMA)
    with checked_engine(model_path=tiny_model_dir("llama"), dtype="float32", jump_forward_max_batch=1) as eng:
        alone = eng.generate(prompt="Record:", sampling_params=_sampled(0, json_schema=schema))
        assert alone["meta_info"]["jump_forward_tokens"] > 0
        together = eng.generate(prompt=["Record:"] * len(SEEDS),
                                sampling_params=[_sampled(s, json_schema=schema) for s in SEEDS])
    for out in together:
        jsonschema.validate(json.loads(out["text"]), SCHEMA)
    # the forced opening '{"name":"' comes while all six decode: nobody jumps over it
    assert min(o["meta_info"]["jump_forward_tokens"] for o in together) == 0
