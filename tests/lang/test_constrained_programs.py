"""The shared program suite, constrained generation: `gen_int` / `dtype`, `regex` and `json_schema`
in SGLang-style programs, on every backend target. Backends that cannot enforce a constraint refuse
it clearly before sending anything.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

import sgflow as sgl
from sgflow.errors import BackendError, ConstraintNotSupportedError


def _constrained(target, program, **kwargs):
    """Run a constrained program: a valid result, or (runtime without constraints) a clear error."""
    try:
        return program.run(backend=target.backend, **kwargs)
    except BackendError as exc:
        assert not target.scripted
        assert re.search(r"regex|json_schema|constraint", str(exc)), exc
        return None


def test_dtype_int_and_str(target):
    @sgl.function
    def decode_int(s):
        s += "The number of hours in a day is " + sgl.gen_int("hours", max_tokens=4) + "\n"
        s += "The number of days in a year is " + sgl.gen("days", dtype=int, max_tokens=4) + "\n"
        s += "A name: " + sgl.gen_string("name", max_tokens=8)

    state = _constrained(target, decode_int, temperature=0)
    if state is not None:
        assert re.fullmatch(r"[-+]?[0-9]+", state["hours"]) and re.fullmatch(r"[-+]?[0-9]+", state["days"])
        assert state["name"].startswith('"')
        if state.get_meta_info("name")["finish_reason"]["type"] == "stop":  # not cut by max_tokens
            assert state["name"].endswith('"') and len(state["name"]) >= 2
    if target.scripted:
        assert (int(state["hours"]), int(state["days"])) == (24, 365)


def test_regex_constraint(target):
    ip = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"

    @sgl.function
    def regex_gen(s):
        s += "Q: What is the IP address of the Google DNS servers?\nA: " + sgl.gen("answer", regex=ip, max_tokens=16)

    state = _constrained(target, regex_gen, temperature=0)
    if state is not None:
        assert re.fullmatch(ip, state["answer"])
    if target.scripted:
        assert state["answer"] == "8.8.8.8"


def test_json_schema_constraint(target):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["name", "population"]}

    @sgl.function
    def city(s):
        s += "Describe Paris. JSON:" + sgl.gen("json", json_schema=schema, max_tokens=64)

    state = _constrained(target, city, temperature=0)
    if state is not None and state.get_meta_info("json")["finish_reason"]["type"] == "stop":
        jsonschema.validate(json.loads(state["json"]), schema)  # (a random model may hit max_tokens first)
    elif state is not None:
        assert state["json"].startswith('{"name":"')


def test_constraint_on_a_backend_that_cannot_enforce_it_fails_clearly():
    backend = sgl.MockBackend({"IP": "1.2.3.4"}, supported_constraints=())

    @sgl.function
    def prog(s):
        s += "IP: " + sgl.gen("ip", regex=r"[0-9.]+")

    with pytest.raises(ConstraintNotSupportedError, match="cannot enforce regex"):
        prog.run(backend=backend)
    assert backend.calls == []  # refused before any request
