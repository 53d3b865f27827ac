"""Chat templates: the registry, how a backend's model picks one, and the text roles produce."""

from __future__ import annotations

import pytest

import sgflow as sgl
from sgflow.chat_template import chat_template_for_model, chat_template_names, get_chat_template
from runtime.model.tiny import CHAT_TEMPLATE as TINY_TEMPLATE

LLAMA3_JINJA = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
LLAMA2_JINJA = "{{ bos_token + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
MISTRAL_JINJA = "{{ '[INST] ' + message['content'] + ' [/INST]' }}"


@pytest.mark.parametrize("hf_template, name", [
    (TINY_TEMPLATE, "chatml"),
    (TINY_TEMPLATE.replace("{% for", "{% if not system %}You are a helpful assistant{% endif %}{% for"), "qwen"),
    (LLAMA3_JINJA, "llama-3-instruct"),
    (LLAMA2_JINJA, "llama-2-chat"),
    (MISTRAL_JINJA, "mistral"),
])
def test_the_tokenizers_own_template_picks_the_family(hf_template, name):
    assert chat_template_for_model("/models/anything", hf_template).name == name


@pytest.mark.parametrize("path, name", [
    ("/m/Meta-Llama-3-8B-Instruct", "llama-3-instruct"),
    ("/m/Llama-2-7b-chat-hf", "llama-2-chat"),
    ("/m/Mistral-7B-Instruct-v0.2", "mistral"),
    ("/m/Qwen2-7B-Instruct", "qwen"),
    ("/m/gpt2", "default"),
])
def test_the_model_path_is_the_fallback(path, name):
    assert chat_template_for_model(path, None).name == name


def test_registry_names_and_unknown_name():
    assert {"default", "chatml", "qwen", "llama-3-instruct", "llama-2-chat", "mistral"} <= set(chat_template_names())
    with pytest.raises(KeyError, match="registered"):
        get_chat_template("vicuna-9000")


def test_chatml_text_matches_the_hf_template():
    from jinja2 import Template

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}]
    expected = Template(TINY_TEMPLATE).render(messages=messages, add_generation_prompt=False)
    assert get_chat_template("chatml").get_prompt(messages) == expected


def test_llama2_puts_the_system_prompt_inside_the_first_user_turn():
    template = get_chat_template("llama-2-chat")
    text = template.get_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                                {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}])
    assert text == "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]A </s><s>[INST] V [/INST]"


def test_a_program_uses_the_backends_template():
    from sgflow.backends.mock_model import MockModel

    backend = sgl.MockBackend(model=MockModel(chat_template=TINY_TEMPLATE))  # as the tiny model reports it

    @sgl.function
    def chat(s):
        s += sgl.system("Be brief.") + sgl.user("Hello") + sgl.assistant(sgl.gen("reply", max_tokens=16))

    state = chat.run(backend=backend)
    assert state.text() == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n ok<|im_end|>\n"
    )
    assert state.messages()[-1] == {"role": "assistant", "content": "ok"}
