"""Tracing runs the program's body through the same handlers as execution, without a model."""

from __future__ import annotations

import pytest

import sgflow as sgl
from sgflow import ir
from sgflow.errors import ProgramMisuseError
from sgflow.tracer import extract_prefix


@sgl.function
def qa(s, question):
    s += "You are a careful assistant who answers questions about geography.\n"
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n")


def test_trace_records_nodes_with_placeholders():
    trace = qa.trace()
    nodes = [node for _, node in trace.nodes]
    assert nodes[1:4] == [ir.Text("Q: "), ir.Placeholder("question", "argument"), ir.Text("\n")]
    assert isinstance(nodes[-1], ir.Gen) and nodes[-1].name == "answer"
    assert trace.variables == ["answer"]
    assert "Placeholder(name='question'" in repr(trace)


def test_trace_prefix_stops_at_the_first_argument():
    assert qa.trace().prefix == "You are a careful assistant who answers questions about geography.\nQ: "
    assert qa.trace(question="Where is Rome?").prefix.endswith("Q: Where is Rome?\nA:")


def test_trace_expands_roles_like_a_real_run():
    @sgl.function
    def chat(s, question):
        s += sgl.user("Hello, please answer.")
        s += sgl.user(question)

    backend = sgl.MockBackend(chat_template="qwen")
    prefix = extract_prefix(chat, backend)
    # the template's default system prompt is inserted exactly as execution would insert it
    assert prefix == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello, please answer.<|im_end|>\n<|im_start|>user\n"
    )
    state = chat.run(question="Why?", backend=backend)
    assert state.text().startswith(prefix)


def test_fstring_of_a_traced_argument_fails_with_what_to_write():
    @sgl.function
    def formatted(s, question):
        s += f"Q: {question}\n"

    with pytest.raises(ProgramMisuseError, match=r"f-string.*s \+= 'text ' \+ question"):
        formatted.trace()
    # the same program runs fine: arguments are real strings then
    assert formatted.run(question="Hi?", backend=sgl.MockBackend()).text() == "Q: Hi?\n"


def test_prefix_extraction_tolerates_what_tracing_cannot_see():
    @sgl.function
    def formatted(s, question):
        s += "A long constant instruction that every run of this program starts with.\n"
        s += f"Q: {question}\n"

    assert extract_prefix(formatted) == "A long constant instruction that every run of this program starts with.\n"


def test_trace_follows_forks_and_branches_on_generated_values():
    @sgl.function
    def branchy(s):
        s += "Start" + sgl.select("pick", ["a", "b"])
        if s["pick"] == "a":
            s += "never while tracing"
        forks = s.fork(2)
        forks += sgl.gen("leaf")
        forks.join()

    trace = branchy.trace()
    owners = {owner for owner, _ in trace.nodes}
    assert owners == {0, 1, 2}  # the program and its two forks
    assert any(isinstance(node, ir.Fork) and node.size == 2 for _, node in trace.nodes)
    assert "never while tracing" not in trace.text
    assert trace.variables == ["leaf", "pick"]


def test_run_batch_precaches_the_traced_prefix():
    backend = sgl.MockBackend()
    qa.run_batch([{"question": "A?"}, {"question": "B?"}], backend=backend)
    first = backend.calls[0]
    assert first["sampling_params"].max_new_tokens == 0
    assert first["text"] == "<bos>" + qa.trace().prefix
    later = backend.calls[1:]
    assert all(c["meta_info"]["cached_tokens"] >= len(first["input_ids"]) - 1 for c in later)
