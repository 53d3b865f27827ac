"""The shared program suite: SGLang-style programs, written once, run on every backend target.

Each program is what a user would write with `import sgflow as sgl`; assertions check what the
user relies on (values, shapes, messages, meta info, concurrency, caching). On scripted targets
the answers are known and checked too.
"""

from __future__ import annotations

import asyncio

import pytest

import sgflow as sgl

FEW_SHOT = (
    "The following are questions with answers.\n\n"
    "Q: What is the capital of France?\nA: Paris\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)


@sgl.function
def few_shot_qa(s, question):
    s += FEW_SHOT
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", stop="\n", temperature=0, max_tokens=12)


def test_few_shot_qa_answers_and_stops_at_newline(target):
    state = few_shot_qa.run(question="What is the capital of the United States?", backend=target.backend)
    assert "\n" not in state["answer"]
    assert state.text().endswith(state["answer"])
    assert state.get_meta_info("answer")["finish_reason"]["type"] in ("stop", "length")
    if target.scripted:
        assert state["answer"].strip() == "Washington"


def test_run_batch_returns_states_in_order_with_progress_bar(target, capsys):
    questions = ["What is the capital of Japan?", "What is the capital of the United States?", "What is the capital of Italy?"]
    states = few_shot_qa.run_batch([{"question": q} for q in questions], backend=target.backend, progress_bar=True)
    assert len(states) == 3
    for state, question in zip(states, questions):
        assert question in state.text()
        assert isinstance(state["answer"], str)
    assert "3/3" in capsys.readouterr().err  # tqdm's final count
    if target.scripted:
        assert [s["answer"].strip() for s in states] == ["Tokyo", "Washington", "Rome"]


def test_run_batch_caches_the_constant_prefix_before_the_programs(target):
    few_shot_qa.run_batch([{"question": "Q1?"}, {"question": "Q2?"}], backend=target.backend)
    if target.model is not None:
        first = target.model.calls[0]
        assert first["sampling_params"].max_new_tokens == 0
        assert first["text"].endswith(FEW_SHOT + "Q: ")
    states = few_shot_qa.run_batch([{"question": "Q3?"}, {"question": "Q4?"}], backend=target.backend)
    for state in states:  # the runtime reports the shared prefix as cached
        assert state.get_meta_info("answer")["cached_tokens"] >= 20


@sgl.function
def multi_turn(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=32))
    with s.user():
        s += question_2
    with s.assistant():
        s += sgl.gen("answer_2", max_tokens=32)


def test_multi_turn_chat_builds_messages_with_roles(target):
    state = multi_turn.run(question_1="Hello", question_2="What is the capital of Japan?", backend=target.backend, temperature=0)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "Hello" and messages[3]["content"] == "What is the capital of Japan?"
    assert messages[4]["content"] == state["answer_2"].strip()
    template = target.backend.get_chat_template()
    assert state.text().startswith(template.get_prefix_and_suffix("system", [])[0])
    if target.scripted:
        assert state["answer_1"].strip() == "Hi there! How can I help?"


def test_explicit_role_begin_and_end(target):
    @sgl.function
    def chat(s):
        s += sgl.user_begin() + "Is the sky blue?" + sgl.user_end()
        s += sgl.assistant_begin()
        s += sgl.gen("reply", max_tokens=8)
        s += sgl.assistant_end()

    state = chat.run(backend=target.backend)
    assert [m["role"] for m in state.messages()] == ["user", "assistant"]


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection, sgl.unconditional_likelihood_normalized])
def test_select_returns_a_choice_with_scores(target, method):
    @sgl.function
    def true_or_false(s, statement):
        s += "Determine whether the statement is True, False, or Unknown.\n"
        s += "Statement: " + statement + "\nIs the sky blue? Answer:"
        s += sgl.select("answer", ["True", "False", "Unknown"], choices_method=method)

    state = true_or_false.run(statement="The sky is blue.", backend=target.backend)
    meta = state.get_meta_info("answer")
    assert state["answer"] in ("True", "False", "Unknown")
    assert state.text().endswith("Answer:" + state["answer"])
    assert meta["method"] == method.name and len(meta["scores"]) == 3
    assert len(meta["input_token_logprobs"]) == 3 and all(meta["input_token_logprobs"])
    if method.requires_unconditional_logprobs:
        assert len(meta["unconditional_token_logprobs"]) == 3


def test_gen_with_choices_is_select(target):
    @sgl.function
    def pick(s):
        s += "Is the sky blue? Answer:" + sgl.gen("answer", choices=[" Yes", " No"])

    state = pick.run(backend=target.backend)
    assert state["answer"] in (" Yes", " No")
    if target.scripted:
        assert state["answer"] == " Yes"


@sgl.function
def parallel_tips(s, topic):
    s += "Act as a helpful assistant.\nUSER: Give some tips for " + topic + ".\nASSISTANT: Okay. Here are tips:\n"
    forks = s.fork(3)
    for i in range(3):
        forks[i] += f"Tip {i + 1}:"
        forks[i] += sgl.gen("tip", max_tokens=48, stop="\n\n")
    forks.join()
    s += "Here are these tips:\n"
    for i in range(3):
        s += f"Tip {i + 1}:" + forks[i]["tip"] + "\n"
    s += "In summary," + sgl.gen("summary", max_tokens=8)
    return forks


def test_fork_join_gathers_child_variables_and_shares_the_prefix(target):
    state = parallel_tips.run(topic="writing", backend=target.backend, temperature=0)
    tips = state["tip"]
    assert isinstance(tips, list) and len(tips) == 3
    for i, tip in enumerate(tips):
        assert f"Tip {i + 1}:{tip}\n" in state.text()
    metrics = state.get_meta_info()
    own = [c["kind"] for c in metrics["calls"] if c["branch"] == ""]
    assert own == ["cache_prefix", "gen"]  # the parent's prefix and its summary
    tips_calls = [c for c in metrics["calls"] if c["branch"]]
    assert [(c["branch"], c["kind"]) for c in tips_calls] == [("0", "gen"), ("1", "gen"), ("2", "gen")]
    assert metrics["num_calls"] == 5 and metrics["completion_tokens"] == sum(c["completion_tokens"] for c in metrics["calls"])
    prefix_tokens = metrics["calls"][0]["prompt_tokens"]
    for child in state.ret_value:  # the runtime reports the shared prefix as cached in every branch
        assert child.get_meta_info("tip")["cached_tokens"] >= prefix_tokens - 1
    if target.model is not None:
        calls = target.model.calls
        assert calls[0]["sampling_params"].max_new_tokens == 0  # the prefix went first
        children = [c for c in calls if c["text"].rstrip().endswith(":") and "Tip " in c["text"][-8:]]
        assert len(children) == 3 and all(c["meta_info"]["cached_tokens"] > 10 for c in children)
    if target.scripted:
        assert tips == [" Keep it short. More words follow."] * 3


def test_forks_run_concurrently():
    backend = sgl.MockBackend({"Tip ": " short"}, latency=0.05)
    parallel_tips.run(topic="x", backend=backend)
    assert backend.max_in_flight >= 3


def test_fork_concate_and_append_keeps_children_text_in_order(target):
    @sgl.function
    def parallel_encoding(s, contexts):
        s += "USER: Please memorize these statements.\n"
        forks = s.fork(len(contexts))
        forks += lambda i: f"Statement {i}: " + contexts[i] + "\n"
        forks.join(mode="concate_and_append")
        s += "Question: who?\nASSISTANT:" + sgl.gen("answer", max_tokens=8)

    contexts = ["Ethan is the father of Liam.", "Noah is the father of Julian.", "Oliver is the father of Carlos."]
    state = parallel_encoding.run(contexts=contexts, backend=target.backend)
    text = state.text()
    positions = [text.index(f"Statement {i}: {c}") for i, c in enumerate(contexts)]
    assert positions == sorted(positions)


def test_streaming_text_iter_yields_the_whole_text_incrementally(target):
    state = multi_turn.run(question_1="Hello", question_2="Tell me a story", backend=target.backend, stream=True, temperature=0)
    chunks = list(state.text_iter())
    assert chunks and "".join(chunks) == state.text()


def test_streaming_a_variable(target):
    @sgl.function
    def story(s):
        s += "Tell me a story:" + sgl.gen("story", max_tokens=16)

    state = story.run(backend=target.backend, stream=True)
    chunks = list(state.text_iter("story"))
    assert chunks and "".join(chunks) == state["story"]


def test_streaming_with_the_async_iterator(target):
    state = multi_turn.run(question_1="Hello", question_2="Tell me a story", backend=target.backend, stream=True)

    async def collect():
        return [chunk async for chunk in state.text_async_iter()]

    chunks = asyncio.run(collect())
    assert "".join(chunks) == state.text()


def test_max_tokens_and_finish_reason_length(target):
    @sgl.function
    def long(s):
        s += "Tell me a story:" + sgl.gen("story", max_tokens=3, ignore_eos=True)

    state = long.run(backend=target.backend)
    meta = state.get_meta_info("story")
    assert meta["completion_tokens"] == 3
    assert meta["finish_reason"]["type"] == "length"


def test_stop_strings_end_generation_before_the_stop(target):
    @sgl.function
    def story(s):
        s += "Tell me a story:" + sgl.gen("story", max_tokens=64, stop=[".", "\n"])

    state = story.run(backend=target.backend)
    assert "." not in state["story"] and "\n" not in state["story"]
    if target.scripted:
        assert state["story"] == " Once upon a time there was a cat"
        assert state.get_meta_info("story")["finish_reason"] == {"type": "stop", "matched": "."}


def test_expert_answer_reuses_a_generated_variable(target):
    @sgl.function
    def expert_answer(s, question):
        s += "Question: " + question + "\n"
        s += "A good person to answer this question is" + sgl.gen("expert", stop=[".", "\n"], max_tokens=24) + ".\n"
        s += "For example," + s["expert"] + " would answer that " + sgl.gen("answer", stop=".", max_tokens=24) + "."

    state = expert_answer.run(question="What is the capital of France?", backend=target.backend)
    assert ("For example," + state["expert"] + " would answer that") in state.text()
    if target.scripted:
        assert state["expert"] == " a geographer" and state["answer"] == " the capital is Paris"


def test_tool_use_with_var_scope(target):
    def calculate(expression):
        left, right = expression.split("*")
        return str(int(left) * int(right))

    @sgl.function
    def tool_use(s, lhs, rhs):
        s += "Question: What is the product of " + str(lhs) + " and " + str(rhs) + "?\n"
        s += "Answer: The answer is calculate(" + sgl.gen("expression", stop=")", max_tokens=16) + ") = "
        expression = s["expression"]
        with s.var_scope("answer"):
            s += calculate(expression) if target.scripted else "0"

    state = tool_use(lhs=257, rhs=983, backend=target.backend, temperature=0)
    assert state.text().endswith(") = " + state["answer"])
    if target.scripted:
        assert int(state["answer"]) == 257 * 983


def test_react_loop_branches_on_selected_actions(target):
    @sgl.function
    def react(s, question):
        s += "Question: " + question + "\n"
        for i in range(1, 3):
            s += f"Thought {i}:" + sgl.gen(stop=[".", "\n"], max_tokens=10) + ".\n"
            s += f"Action {i}: " + sgl.select(f"action_{i}", ["Search", "Finish"])
            if s[f"action_{i}"] == "Search":
                s += " [" + sgl.gen(stop="]", max_tokens=6) + "].\n"
            else:
                s += " [" + sgl.gen("answer", stop="]", max_tokens=6) + "].\n"
                break

    state = react.run(question="Where does the creator of Linux live?", backend=target.backend)
    assert state["action_1"] in ("Search", "Finish")
    if target.scripted:
        assert state["action_1"] == "Search"


def test_program_metrics_count_every_call(target):
    state = multi_turn.run(question_1="Hello", question_2="What is the capital of Japan?", backend=target.backend)
    metrics = state.get_meta_info()
    assert metrics["num_calls"] == 2 and len(metrics["calls"]) == 2
    assert metrics["prompt_tokens"] == sum(c["prompt_tokens"] for c in metrics["calls"])
    assert metrics["calls"][1]["prompt_tokens"] > metrics["calls"][0]["prompt_tokens"]
    assert all(c["latency"] > 0 for c in metrics["calls"])
    # the second turn re-reads the whole first turn from the prefix cache
    assert metrics["calls"][1]["cached_tokens"] >= metrics["calls"][0]["prompt_tokens"]


def test_exact_tokens_each_call_extends_the_previous_ids(target):
    state = multi_turn.run(question_1="Hello.", question_2="Tell me a story", backend=target.backend, exact_tokens=True)
    if target.backend.tokenizer is None:
        pytest.skip("no local tokenizer for this backend: prompts go as text")
    ids = state.token_ids()
    assert ids and state.get_meta_info()["calls"][1]["cached_tokens"] >= state.get_meta_info()["calls"][0]["prompt_tokens"]
    if target.model is not None:
        first, second = [c["input_ids"] for c in target.model.calls[-2:]]
        assert second[: len(first)] == first
        assert ids[: len(second)] == second


def test_reading_an_unknown_variable_lists_the_existing_ones(target):
    state = few_shot_qa.run(question="What is the capital of Japan?", backend=target.backend)
    with pytest.raises(KeyError, match=r"no variable 'anwser'.*existing: \['answer'\]"):
        state["anwser"]


def test_sub_programs_compose_on_one_state(target):
    @sgl.function
    def ask(s, question):
        s += "Q: " + question + "\nA:" + sgl.gen("answer", stop="\n", max_tokens=16)

    @sgl.function
    def two_questions(s):
        s += FEW_SHOT
        ask(s, "What is the capital of Japan?")
        first = s["answer"]
        ask(s, "What is the capital of the United States?")
        s["first"] = first

    state = two_questions.run(backend=target.backend)
    assert "first" in state and state["first"] != "" and state.text().count("Q: ") == 4
    if target.scripted:
        assert (state["first"].strip(), state["answer"].strip()) == ("Tokyo", "Washington")


def test_logprobs_are_returned_when_asked(target):
    @sgl.function
    def scored(s):
        s += "Tell me a story:" + sgl.gen("story", max_tokens=6, return_logprob=True, top_logprobs_num=2,
                                         return_text_in_logprobs=True)

    meta = scored.run(backend=target.backend).get_meta_info("story")
    entries = meta["output_token_logprobs"]
    assert len(entries) == meta["completion_tokens"]
    assert all(isinstance(e[0], float) and e[0] <= 0.0 for e in entries)
    if target.backend.tokenizer is not None:
        assert all(isinstance(e[2], str) for e in entries)


@sgl.function
def nested_forks(s):
    s += "Root."
    outer = s.fork(2)
    for branch in outer:
        branch += "Outer." + sgl.gen("a", max_tokens=3)
    inner = outer[1].fork(2)
    for branch in inner:
        branch += "Inner." + sgl.gen("b", max_tokens=3)
    inner.join()
    outer.join()
    s += sgl.gen("end", max_tokens=2)


def test_program_metrics_include_nested_forks_by_branch(target):
    metrics = nested_forks.run(backend=target.backend, temperature=0).get_meta_info()
    gens = sorted(c["branch"] for c in metrics["calls"] if c["kind"] == "gen")
    assert gens == ["", "0", "1", "1.0", "1.1"]
    assert metrics["prompt_tokens"] == sum(c["prompt_tokens"] for c in metrics["calls"])
