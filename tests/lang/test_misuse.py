"""Misuse fails at once, where it is written, with a message that says what to write instead."""

from __future__ import annotations

import pytest

import sgflow as sgl
from sgflow.errors import NoBackendError, ProgramMisuseError


@pytest.fixture
def backend():
    return sgl.MockBackend({"Hello": " hi"})


def test_nested_roles_fail_at_the_append(backend):
    reached = []

    @sgl.function
    def nested(s):
        s += sgl.user("Hello")
        with s.assistant():
            s += sgl.user("again")
        reached.append(True)

    with pytest.raises(ProgramMisuseError, match=r"role 'user' begun inside role 'assistant'.*End 'assistant' first"):
        nested.run(backend=backend)
    assert reached == []


def test_role_end_without_begin(backend):
    @sgl.function
    def unbalanced(s):
        s += "x" + sgl.assistant_end()

    with pytest.raises(ProgramMisuseError, match="assistant_end.*without a matching assistant_begin"):
        unbalanced.run(backend=backend)


def test_select_without_choices():
    with pytest.raises(ProgramMisuseError, match=r"select\('answer'\) needs choices.*gen\('answer'\)"):
        sgl.select("answer")
    with pytest.raises(ProgramMisuseError, match="needs choices"):
        sgl.select("answer", [])
    with pytest.raises(ProgramMisuseError, match="distinct"):
        sgl.select("answer", ["a", "a"])


def test_regex_with_choices_and_dtype_with_regex():
    with pytest.raises(ProgramMisuseError, match="choices together with regex"):
        sgl.gen("x", regex="[0-9]+", choices=["1", "2"])
    with pytest.raises(ProgramMisuseError, match="both dtype and regex"):
        sgl.gen("x", dtype=int, regex="[0-9]+")
    with pytest.raises(ValueError, match="at most one of regex, json_schema"):
        sgl.gen("x", regex="[0-9]+", json_schema={"type": "integer"})


def test_invalid_arguments_name_the_field():
    with pytest.raises(ValueError, match="temperature"):
        sgl.gen("x", temperature=-1)
    with pytest.raises(TypeError, match="unknown sampling parameter 'temprature'"):
        sgl.gen("x", temprature=0.5)
    with pytest.raises(ValueError, match="invalid regex"):
        sgl.gen("x", regex="([0-9]")
    with pytest.raises(ValueError, match="json_schema is not valid JSON"):
        sgl.gen("x", json_schema="{not json")
    with pytest.raises(ProgramMisuseError, match="stop_regex"):
        sgl.gen("x", stop_regex="a+")
    with pytest.raises(ProgramMisuseError, match="dtype must be one of"):
        sgl.gen("x", dtype=list)


def test_reading_a_variable_before_it_exists(backend):
    @sgl.function
    def early(s):
        s += "Hello" + sgl.gen("greeting", max_tokens=4)
        s += s["greting"]

    with pytest.raises(KeyError, match=r"no variable 'greting'.*existing: \['greeting'\]"):
        early.run(backend=backend)


def test_appending_something_that_is_not_text(backend):
    @sgl.function
    def bad(s):
        s += 42

    with pytest.raises(ProgramMisuseError, match=r"s \+= str\(value\)"):
        bad.run(backend=backend)

    @sgl.function
    def none(s):
        s += None

    with pytest.raises(ProgramMisuseError, match="None"):
        none.run(backend=backend)


def test_unknown_run_keyword_says_what_it_is_not(backend):
    @sgl.function
    def prog(s, question):
        s += question

    with pytest.raises(TypeError, match=r"'questoin': not an argument of prog \(\['question'\]\)"):
        prog.run(questoin="hi", backend=backend)


def test_running_without_a_backend_says_how_to_set_one(monkeypatch):
    monkeypatch.setattr(sgl.global_config, "default_backend", None)

    @sgl.function
    def prog(s):
        s += "x"

    with pytest.raises(NoBackendError, match="set_default_backend"):
        prog.run()


def test_program_must_take_the_state_first():
    def prog():
        pass

    with pytest.raises(ProgramMisuseError, match=r"program state first: def prog\(s, \.\.\.\)"):
        sgl.function(prog)


def test_select_with_temperature_and_n_greater_than_one(backend):
    with pytest.raises(ProgramMisuseError, match="temperature must be 0"):
        sgl.select("x", ["a", "b"], temperature=0.7)

    @sgl.function
    def many(s):
        s += "Hello" + sgl.gen("x", n=2)

    with pytest.raises(ProgramMisuseError, match=r"s.fork\(n\)"):
        many.run(backend=backend)


def test_images_are_refused():
    with pytest.raises(NotImplementedError, match="images"):
        sgl.image("cat.png")


def test_a_backend_error_reaches_run_and_the_batch_states():
    from sgflow.errors import BackendError

    def refuse(prompt, params):
        raise ValueError("the prompt has 9999 tokens; the context length is 512")

    backend = sgl.MockBackend({"long": refuse, "short": " fine"})

    @sgl.function
    def prog(s, text):
        s += text + sgl.gen("x", max_tokens=4)

    with pytest.raises(BackendError, match="context length is 512"):
        prog.run(text="long", backend=backend)
    good, bad = prog.run_batch([{"text": "short"}, {"text": "long"}], backend=backend)
    assert good["x"] == " fine" and good.error() is None
    assert isinstance(bad.error(), BackendError)
    with pytest.raises(BackendError):
        bad["x"]
