"""The OpenAI backend's requests and fallbacks, against a scripted OpenAI-compatible API
(an httpx transport in the test process; the real server is tested when it runs)."""

from __future__ import annotations

import json

import httpx
import pytest

import sgflow as sgl
from sgflow.errors import ConstraintNotSupportedError, ProgramMisuseError


class FakeOpenAI:
    """Records requests; answers chat / completions; echo scoring only when `echo` is True."""

    def __init__(self, reply: str = "Paris", echo: bool = True):
        self.reply, self.echo, self.requests = reply, echo, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append((request.url.path, body))
        usage = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
        if request.url.path.endswith("/chat/completions"):
            message = {"role": "assistant", "content": self.reply}
            return httpx.Response(200, json={"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage})
        if body.get("echo"):
            if not self.echo:
                return httpx.Response(400, json={"error": {"message": "echo is not supported"}})
            return httpx.Response(200, json=self._echo(body["prompt"], body["model"], usage))
        return httpx.Response(200, json={"id": "t1", "object": "text_completion", "created": 0, "model": body["model"],
                                         "choices": [{"index": 0, "text": self.reply, "finish_reason": "length", "logprobs": None}], "usage": usage})

    def _echo(self, prompt: str, model: str, usage: dict) -> dict:
        tokens = prompt.split(" ")  # one token per word (with its leading space)
        tokens = [tokens[0]] + [" " + t for t in tokens[1:]]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        values = [None] + [-0.1 if t.strip() == "Paris" else -3.0 for t in tokens[1:]]
        logprobs = {"tokens": tokens, "token_logprobs": values, "text_offset": offsets, "top_logprobs": None}
        return {"id": "e1", "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": prompt, "finish_reason": "length", "logprobs": logprobs}], "usage": usage}


def _backend(fake: FakeOpenAI, **kwargs) -> sgl.OpenAI:
    return sgl.OpenAI("test-model", base_url="http://fake/v1", api_key="k",
                      http_client=httpx.AsyncClient(transport=httpx.MockTransport(fake)), **kwargs)


@sgl.function
def chat(s, question):
    s += sgl.system("Be brief.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=8, stop=["\n"], temperature=0))


def test_chat_model_sends_the_messages_and_sampling_params():
    fake = FakeOpenAI()
    state = chat.run(question="Capital of France?", backend=_backend(fake))
    assert state["answer"] == "Paris"
    path, body = fake.requests[0]
    assert path.endswith("/chat/completions")
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    assert (body["max_tokens"], body["stop"], body["temperature"]) == (8, ["\n"], 0.0)
    meta = state.get_meta_info("answer")
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["finish_reason"]) == (11, 2, {"type": "stop"})


def test_chat_model_refuses_gen_outside_the_assistant_role():
    @sgl.function
    def plain(s):
        s += "Q: hi\nA:" + sgl.gen("a")

    with pytest.raises(ProgramMisuseError, match="only as the assistant"):
        plain.run(backend=_backend(FakeOpenAI()))


def test_constraints_are_refused_not_dropped():
    @sgl.function
    def ip(s):
        s += sgl.user("IP?") + sgl.assistant(sgl.gen("ip", regex=r"[0-9.]+"))

    fake = FakeOpenAI()
    with pytest.raises(ConstraintNotSupportedError, match="regex"):
        ip.run(backend=_backend(fake))
    assert fake.requests == []


def test_completion_model_scores_select_choices_with_echo():
    @sgl.function
    def capital(s):
        s += "The capital of France is " + sgl.select("city", ["London", "Paris", "Rome"])

    fake = FakeOpenAI()
    state = capital.run(backend=_backend(fake, is_chat_model=False))
    assert state["city"] == "Paris"
    assert all(body["echo"] for _, body in fake.requests)


def test_select_falls_back_to_generation_and_says_so():
    @sgl.function
    def capital(s):
        s += "The capital of France is" + sgl.select("city", ["London", "Paris"])

    fake = FakeOpenAI(reply=" Paris, of course", echo=False)
    with pytest.warns(UserWarning, match="generates and matches"):
        state = capital.run(backend=_backend(fake, is_chat_model=False))
    assert state["city"] == "Paris"
    assert state.get_meta_info("city")["method"] == "generate_and_match"


def test_dtype_int_without_regex_is_checked_after_generation():
    @sgl.function
    def count(s):
        s += "Hours in a day:" + sgl.gen_int("n")

    ok = count.run(backend=_backend(FakeOpenAI(reply="24"), is_chat_model=False))
    assert ok["n"] == "24"
    with pytest.raises(ValueError, match="could not be enforced"):
        count.run(backend=_backend(FakeOpenAI(reply="many"), is_chat_model=False))


def test_unconditional_select_scores_each_choice_alone_too():
    @sgl.function
    def capital(s):
        s += "The capital of France is " + sgl.select("city", ["London", "Paris"], choices_method=sgl.unconditional_likelihood_normalized)

    fake = FakeOpenAI()
    state = capital.run(backend=_backend(fake, is_chat_model=False))
    assert state["city"] in ("London", "Paris")
    assert [body["prompt"] for _, body in fake.requests][-2:] == ["London", "Paris"]
    assert state.get_meta_info("city")["method"] == "unconditional_likelihood_normalized"


def test_against_our_server_chat_and_echo_scoring(request):
    from tests.lang.conftest import _server_available

    if not _server_available():
        pytest.skip("the HTTP server is not there yet")
    server = request.getfixturevalue("server_backend")
    name = server.model_info.get("served_model_name") or server.model_path
    chat_backend = sgl.OpenAI(name, base_url=server.base_url + "/v1", api_key="none")
    state = chat.run(question="Capital of France?", backend=chat_backend)
    assert isinstance(state["answer"], str) and state.get_meta_info("answer")["prompt_tokens"] > 0

    @sgl.function
    def capital(s):
        s += "The capital of France is " + sgl.select("city", ["London", "Paris", "Rome"])

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # echo scoring works: no fallback warning
        picked = capital.run(backend=sgl.OpenAI(name, base_url=server.base_url + "/v1", api_key="none", is_chat_model=False))
    assert picked["city"] in ("London", "Paris", "Rome")
    assert all(len(x) >= 1 for x in picked.get_meta_info("city")["input_token_logprobs"])
