"""The chat-template renderer (server/engine/chat_template.py) on every template of llama.cpp's corpus.

tests/data/templates/ holds llama.cpp's models/templates/*.jinja (see its README). Each must render a
tool conversation (system prompt, one tool, a user message, an assistant call, its result, the
generation prompt) and a plain one, or be refused with a clear message listed in REFUSED below.
The targeted tests after the corpus pin each renderer behaviour a template of the corpus needed.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from nomoat.engine.chat_template import ChatTemplate, TemplateCaps, shape_messages
from nomoat.engine.errors import InvalidInput

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
NAMES = sorted(p.name for p in TEMPLATES.glob("*.jinja"))

# test-chat.cpp's special_function_tool.
TOOL = {"type": "function", "function": {
    "name": "special_function", "description": "I'm special",
    "parameters": {"type": "object", "properties": {"arg1": {"type": "integer", "description": "The arg."}},
                   "required": ["arg1"]}}}
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
# "123456789": 9 alphanumerics, as Mistral's templates require of a call id.
CALL = {"id": "123456789", "type": "function", "function": {"name": "special_function", "arguments": {"arg1": 1}}}
TOOL_CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "Please call the function."},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "123456789", "content": "Hello"},
]
PLAIN_CONVERSATION = [
    SYSTEM,
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "How are you?"},
]

# Template -> conversation ("tool" or "plain") -> what its refusal says, and why it is right.
REFUSED: dict[str, dict[str, str]] = {
    # Gemma 2 has no tool role and raises on any role but user/assistant, as it does in llama.cpp.
    # Its template does not read `tools`, so nomoat's tools layer (server/core/tools.py's
    # prompt_messages) sends it calls and results as user/assistant text, never raw tool messages.
    "google-gemma-2-2b-it.jinja": {"tool": "Conversation roles must alternate"},
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / name).read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>")


def test_the_corpus_is_there() -> None:
    assert len(NAMES) == 70, "tests/data/templates/ should hold llama.cpp's 70 templates"
    assert set(REFUSED) <= set(NAMES)


def render_or_refuse(name: str, kind: str, messages: list[dict[str, Any]], **kwargs: Any) -> str | None:
    """The template's render of a conversation, or None where REFUSED lists its refusal (checked here)."""
    tmpl = template(name)
    refusal = REFUSED.get(name, {}).get(kind)
    if not refusal:
        return tmpl.render(messages, **kwargs)
    with pytest.raises(InvalidInput, match=refusal):
        tmpl.render(messages, **kwargs)
    return None


@pytest.mark.parametrize("name", NAMES)
def test_renders_the_tool_conversation(name: str) -> None:
    text = render_or_refuse(name, "tool", TOOL_CONVERSATION, tools=[TOOL])
    if text is None:
        return
    assert "Please call the function." in text
    tmpl = template(name)
    if tmpl.supports_tools:
        assert "special_function" in text
        # The tool's name from its definition alone, not from the call in the history.
        assert "special_function" in tmpl.render([SYSTEM, {"role": "user", "content": "Hi"}], tools=[TOOL])


@pytest.mark.parametrize("name", NAMES)
def test_renders_the_plain_conversation(name: str) -> None:
    text = render_or_refuse(name, "plain", PLAIN_CONVERSATION)
    if text is None:
        return
    assert "How are you?" in text
    assert "You are a helpful assistant." in text  # merged into the user's turn where there is no system role


# --- what the corpus needed, one behaviour each -------------------------------------------------


def render(source: str, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> str:
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(messages or [], **kwargs)


def test_a_template_may_grow_its_own_lists_but_not_the_callers() -> None:
    # Kimi K2 queues call ids with ns.ids.append / ns.ids.pop(0).
    source = ("{% set ns = namespace(ids=[]) %}{% set _ = ns.ids.append('a') %}{% set _ = ns.ids.append('b') %}"
              "{{ ns.ids.pop(0) }}{{ ns.ids | length }}{% set _ = messages.append({'role': 'x'}) %}")
    messages = [{"role": "user", "content": "Hi"}]
    variables = {"queue": [1]}
    assert render(source + "{% set _ = queue.append(2) %}", messages, variables=variables) == "a1"
    assert messages == [{"role": "user", "content": "Hi"}]
    assert variables == {"queue": [1]}


def test_the_sandbox_still_holds() -> None:
    with pytest.raises(InvalidInput):
        render("{{ ''.__class__.__mro__ }}")
    with pytest.raises(InvalidInput):
        render("{% include '/etc/passwd' %}")
    with pytest.raises(InvalidInput):
        render("{% set d = {} %}{% set _ = d.update({'a': 1}) %}")


def test_tojson_takes_a_filtered_sequence() -> None:
    # llama.cpp's DeepSeek R1 template writes `tools | map(attribute='function') | tojson`.
    text = render("{{ tools | map(attribute='function') | map(attribute='name') | tojson(indent=2) }}", tools=[TOOL])
    assert text == '[\n  "special_function"\n]'
    assert render("{{ missing | tojson }}") == "null"


def test_null_content_is_an_empty_string() -> None:
    # Qwen3 and gpt-oss test `'</think>' in content`; Phi 3.5 and Granite concatenate it.
    text = render("{% for m in messages %}[{{ m.content + '|' }}{{ '</think>' in m.content }}]{% endfor %}",
                  [{"role": "assistant", "content": None, "tool_calls": [CALL]}])
    assert text == "[|False]"


def test_tools_are_undefined_without_tools() -> None:
    # Hermes 2 Pro and Command R+ iterate `tools` unguarded.
    source = "{{ tools is defined }}{% for t in tools %}{{ t.function.name }}{% endfor %}"
    assert render(source) == "False"
    assert render(source, tools=[]) == "False"
    assert render(source, tools=[TOOL]) == "Truespecial_function"


def test_date_string_defaults_to_today_and_a_request_may_set_it() -> None:
    llama = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text(encoding="utf-8")
    messages = [{"role": "user", "content": "Hi"}]
    today = datetime.datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}\n" in render(llama, messages)
    assert "Today Date: 01 Jan 2025\n" in render(llama, messages, variables={"date_string": "01 Jan 2025"})
    assert render("{{ datetime }}") == datetime.datetime.now().strftime("%b %d %Y")


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn() -> None:
    gemma = template("google-gemma-2-2b-it.jinja")
    assert not gemma.caps.system_role
    text = gemma.render([SYSTEM, {"role": "user", "content": "Hi"}])
    assert "<start_of_turn>user\nYou are a helpful assistant.\nHi<end_of_turn>" in text


def test_call_arguments_take_the_shape_the_template_reads() -> None:
    as_string = {**CALL, "function": {"name": "special_function", "arguments": '{"arg1": 1}'}}
    for call in (CALL, as_string):  # a mapping or OpenAI's JSON string, whichever the caller sends
        conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
        # Llama 3.1 writes `arguments | tojson`: a mapping, or the call would be a quoted string.
        llama = template("meta-llama-Llama-3.1-8B-Instruct.jinja")
        assert llama.caps.object_arguments
        assert '"parameters": {"arg1": 1}' in llama.render(conversation, tools=[TOOL])
        # Functionary v3.2 concatenates the arguments: the JSON string.
        functionary = template("meetkai-functionary-medium-v3.2.jinja")
        assert not functionary.caps.object_arguments
        assert 'special_function\n{"arg1": 1}' in functionary.render(conversation, tools=[TOOL])


def test_a_template_that_writes_calls_only_for_null_content_gets_null() -> None:
    # DeepSeek R1 distills: `message['content'] is none` guards the call, concatenated as a string.
    distill = template("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja")
    assert distill.caps == TemplateCaps(system_role=True, object_arguments=False, null_call_content=True)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [CALL]}]
    assert 'special_function\n```json\n{"arg1": 1}\n```' in distill.render(conversation)


def test_shaping_leaves_the_callers_messages_alone() -> None:
    messages = [SYSTEM, {"role": "assistant", "content": None, "tool_calls": [CALL]}]
    shaped = shape_messages(messages, TemplateCaps(system_role=False, object_arguments=False))
    assert shaped == [{"role": "user", "content": "You are a helpful assistant."},
                      {"role": "assistant", "content": "", "tool_calls": [
                          {**CALL, "function": {"name": "special_function", "arguments": '{"arg1": 1}'}}]}]
    assert messages[1]["content"] is None and CALL["function"]["arguments"] == {"arg1": 1}  # type: ignore[index]


def test_arguments_that_are_not_json_stay_text() -> None:
    call = {**CALL, "function": {"name": "special_function", "arguments": "not json"}}
    shaped = shape_messages([{"role": "assistant", "content": "", "tool_calls": [call]}], TemplateCaps())
    assert shaped[0]["tool_calls"][0]["function"]["arguments"] == "not json"


def test_firefunction_reads_its_tools_as_functions() -> None:
    text = template("fireworks-ai-llama-3-firefunction-v2.jinja").render([{"role": "user", "content": "Hi"}],
                                                                          tools=[TOOL])
    assert '"name": "special_function"' in text
    assert "Today is " + datetime.datetime.now().strftime("%b %d %Y") in text


def test_transformers_globals_and_tags() -> None:
    source = ("{% generation %}g{% endgeneration %}{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}"
              "{{ i }}{% endfor %}{% set ns = namespace(x=1) %}{% set ns.x = 2 %}{{ ns.x }}"
              "{{ {'a': 1}.get('a') }}{{ 'a,b'.split(',') | join('+') }}{{ ' x '.strip().title() }}"
              "{{ strftime_now('%Y') }}")
    assert render(source) == f"g121a+bX{datetime.datetime.now().year}"
    with pytest.raises(InvalidInput, match="refused these messages: no"):
        render("{{ raise_exception('no') }}")
