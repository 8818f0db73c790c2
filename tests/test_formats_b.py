"""gpt-oss (harmony), Command R7B / Cohere2 MoE / Command R+ and Granite 3.3 / 4.x formats on llama.cpp's cases.

The model outputs and the messages they must parse to are ported from llama.cpp's tests/test-chat.cpp
(llama-cpp-python 0.3.36's vendored copy, MIT): gpt-oss lines 6423-6593, Command R7B 2818-2862 and
5876-5888, Cohere2 MoE 2868-2971, Command R+ 5890-5910, Granite 3.3 3365-3402, Granite 4.0 3404-3426,
Granite 4.1 3428-3441; the gpt-oss generation prompt from 7008-7013. `message_assist` and friends are
their definitions at 1033-1081. The templates are tests/data/templates/ (llama.cpp's models/templates/).

Left out, and why:
- reasoning_format none for Command R7B (2831) and Cohere2 MoE (2883): the markers' splitter is
  core/reasoning.py's, not these formats'; the harmony one (6442) is here, as gpt-oss brings its own.
- the continuation cases (gpt-oss 6582, Granite 3.3 3383, Command R+ 5902, Granite 4.0 3418): they test
  the prompt built for a prefilled assistant message, not a parse; the generated half of gpt-oss's 6591 is here.
- llama.cpp's expectations on whitespace-normalised argument text (`{"arg1":1}` in message_assist_call_idx):
  nomoat re-dumps every call's arguments, so calls are compared as decoded JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nomoat.core.structured import Grammar
from nomoat.engine.chat_template import ChatTemplate
from nomoat.formats import ChatFormat, ToolCall, ToolRule, ToolSyntax, detect
from nomoat.formats.command_r import COHERE2_MOE, COMMAND_R7B, COMMAND_R_PLUS
from nomoat.formats.granite import GRANITE_3, GRANITE_4
from nomoat.formats.harmony import HARMONY, ChannelSplitter

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
NAMES = {"special_function", "python", "todo_list", "edit"}
HELLO = "Hello, world!\nWhat's up?"
CALL = ("special_function", {"arg1": 1})


def template_source(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def read(fmt: ChatFormat, text: str, *, started: bool | None = False, cut: bool = False,
         stream: bool = False) -> tuple[str, str, list[ToolCall]]:
    """(reasoning, content, calls) as the generation core reads an output: split, then sections of calls."""
    reasoning, content = split(fmt, text, started, stream)
    rest, calls = sections(fmt.tools, content, cut)
    return reasoning, rest, calls


def split(fmt: ChatFormat, text: str, started: bool | None, stream: bool) -> tuple[str, str]:
    if fmt.splitter is None:  # the markers' split, as core/reasoning.py does it (enough for these outputs)
        reasoning = ""
        if fmt.reasoning is not None and (started or text.startswith(fmt.reasoning.open)):
            body = text if started else text[len(fmt.reasoning.open):]
            reasoning, _, text = body.partition(fmt.reasoning.close)
        for w in fmt.wrappers:
            text = text.replace(w, "")
        return reasoning, text
    s = fmt.splitter(started)
    pieces = [p for ch in text for p in s.feed(ch)] if stream else s.feed(text)
    pieces += s.finish()
    return "".join(t for k, t in pieces if k == "reasoning"), "".join(t for k, t in pieces if k == "content")


def sections(syntax: ToolSyntax, content: str, cut: bool) -> tuple[str, list[ToolCall]]:
    """Content outside the sections of calls, and the calls: core/tool_calls.py's loop over one whole text."""
    out: list[str] = []
    calls: list[ToolCall] = []
    while True:
        at = min((i for i in (content.find(s) for s in syntax.starts) if i >= 0), default=-1)
        if at < 0:
            return "".join(out) + content, calls
        out.append(content[:at])
        content = content[at:]
        end = syntax.section_end(content)
        section, content = (content, "") if end is None else (content[:end], content[end:])
        found = syntax.parse_cut(section, NAMES) if end is None and cut else syntax.parse(section, NAMES)
        if found:
            calls += found
        elif not (end is None and cut):
            out.append(section)


def decoded(calls: list[ToolCall]) -> list[tuple[str, object]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


# --- gpt-oss ------------------------------------------------------------------------------------

HARMONY_CASES = [
    ("<|channel|>final<|message|>" + HELLO, "", HELLO, []),  # 6428
    ("<|channel|>commentary<|message|>" + HELLO, "", HELLO, []),  # 6431
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>" + HELLO,
     "I'm\nthinking", HELLO, []),  # 6434
    (' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}', "", "", [CALL]),  # 6457
    ('<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}', "", "", [CALL]),  # 6464
    (' to=functions.special_function<|channel|>analysis <|constrain|>json<|message|>{"arg1": 1}', "", "",
     [CALL]),  # 6471
    ('<|channel|>commentary to=functions.special_function<|message|>{"arg1": 1}', "", "", [CALL]),  # 6478
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant to=functions.special_function"
     '<|channel|>analysis<|message|>{"arg1": 1}', "I'm\nthinking", "", [CALL]),  # 6485
    ("<|channel|>analysis<|message|>Thinking about edit...<|end|><|start|>assistant<|channel|>commentary "
     'to=functions.edit <|constrain|>json<|message|>{"oldString": "if (part < railCount - 1) {", '
     '"newString": "if (part < 4) {", "replaceAll": false}', "Thinking about edit...", "",
     [("edit", {"oldString": "if (part < railCount - 1) {", "newString": "if (part < 4) {",
                "replaceAll": False})]),  # 6494
    ("<|channel|>analysis<|message|>I need to output the invoice details in JSON<|end|><|start|>assistant"
     '<|channel|>final <|constrain|>json<|message|>{"amount": 123.45, "date": "2025-12-03"}',
     "I need to output the invoice details in JSON", '{"amount": 123.45, "date": "2025-12-03"}', []),  # 6530
    ("<|channel|>analysis<|message|>I will execute python to say hello<|end|><|start|>assistant "
     "to=container.exec<|channel|>commentary<|message|>python3 -c 'print(\"hello\")'",
     "I will execute python to say hello", "", []),  # 6546: unsolicited built-in calls are dropped
    ("<|channel|>analysis<|message|>I will execute python to say hello<|end|><|start|>assistant"
     '<|channel|>commentary to=python <|constrain|>code<|message|>print("hello")',
     "I will execute python to say hello", "", []),  # 6555
    ("<|channel|>commentary to=assistant<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant"
     "<|channel|>final<|message|>" + HELLO, "I'm\nthinking", HELLO, []),  # 6565
    ("<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>commentary to=assistant"
     "<|channel|>final<|message|>" + HELLO, "I'm\nthinking", HELLO, []),  # 6573
    # What a model forced by calls_rule writes, then <|call|> (an end-of-generation token, not text).
    ('<|channel|>commentary to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}', "", "",
     [CALL]),
    # A preamble to the user, then a call closed by <|call|>.
    ("<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant<|channel|>commentary "
     'to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}<|call|>', "", "Let me check.", [CALL]),
    ("Plain text, no channel at all.", "", "Plain text, no channel at all.", []),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("output", "reasoning", "content", "calls"), HARMONY_CASES)
def test_harmony_reads_llama_cpp_outputs(output: str, reasoning: str, content: str, calls: list[object],
                                         stream: bool) -> None:
    got = read(HARMONY, output, stream=stream)
    assert (got[0], got[1], decoded(got[2])) == (reasoning, content, calls)


def test_harmony_partial_analysis_is_reasoning() -> None:  # 6450
    assert read(HARMONY, "<|channel|>analysis<|message|>I'm\nthinking", cut=True)[:2] == ("I'm\nthinking", "")


def test_harmony_reasoning_format_none_keeps_the_analysis_in_content() -> None:  # 6442
    out = "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant<|channel|>final<|message|>" + HELLO
    assert read(HARMONY, out, started=None) == ("", "<|channel|>analysis<|message|>I'm\nthinking<|end|>" + HELLO, [])


def test_harmony_continued_reasoning() -> None:  # 6591: the prompt ends inside the analysis message
    out = " thinking<|end|><|start|>assistant<|channel|>final<|message|>" + HELLO
    assert read(HARMONY, out, started=True) == (" thinking", HELLO, [])
    assert HARMONY.starts_in_reasoning("<|start|>assistant<|channel|>analysis<|message|>")


def test_harmony_cut_call_keeps_the_arguments_written() -> None:
    out = '<|channel|>commentary to=functions.special_function <|constrain|>json<|message|>{"arg'
    _, content, calls = read(HARMONY, out, cut=True, stream=True)
    assert (content, [(c.name, c.arguments) for c in calls]) == ("", [("special_function", '{"arg')])
    assert read(HARMONY, "<|channel|>commentary to=functions.spec", cut=True) == ("", "", [])


def test_harmony_streaming_holds_back_partial_markers() -> None:
    s = ChannelSplitter(False)
    assert s.feed("<|channel|>final<|message|>Hi<|e") == [("content", "Hi")]
    assert s.feed("nd|>") == []
    assert s.finish() == []


def test_gpt_oss_template_prompt_and_reasoning_effort() -> None:  # 7008
    template = ChatTemplate(template_source("openai-gpt-oss-120b"), bos_token="", eos_token="")
    prompt = template.render([{"role": "user", "content": "Hi"}], variables={"reasoning_effort": "high"})
    assert prompt.endswith("<|start|>assistant") and "Reasoning: high" in prompt
    assert not HARMONY.starts_in_reasoning(prompt)


# --- Command R7B, Cohere2 MoE, Command R+ ---------------------------------------------------------

R7B_CALL = ('<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}}\n]'
            "<|END_ACTION|>")
R7B_PARTIAL = '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "special_function", '


@pytest.mark.parametrize(("fmt", "output", "started", "reasoning", "content", "calls"), [
    (COMMAND_R7B, f"<|START_RESPONSE|>{HELLO}<|END_RESPONSE|>", False, "", HELLO, []),  # 2822, 5879
    (COMMAND_R7B, f"<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_RESPONSE|>{HELLO}<|END_RESPONSE|>",
     False, "I'm\nthinking", HELLO, []),  # 2824
    (COMMAND_R7B, f"<|START_THINKING|>I'm\nthinking<|END_THINKING|>{R7B_CALL}", False, "I'm\nthinking", "",
     [CALL]),  # 2837, 5880
    (COMMAND_R7B, f"<|START_THINKING|><|END_THINKING|>{R7B_CALL}", False, "", "", [CALL]),  # 2856
    (COHERE2_MOE, f"I'm\nthinking<|END_THINKING|><|START_TEXT|>{HELLO}<|END_TEXT|>", True, "I'm\nthinking",
     HELLO, []),  # 2877, 2953
    (COHERE2_MOE, f"<|END_THINKING|><|START_TEXT|>{HELLO}<|END_TEXT|>", True, "", HELLO, []),  # 2888
    (COHERE2_MOE, 'I need to output the invoice details in JSON<|END_THINKING|><|START_TEXT|>{"amount": 123.45, '
     '"date": "2025-12-03"}<|END_TEXT|>', True, "I need to output the invoice details in JSON",
     '{"amount": 123.45, "date": "2025-12-03"}', []),  # 2894
    (COHERE2_MOE, f"I'm\nthinking<|END_THINKING|>{R7B_CALL}", True, "I'm\nthinking", "", [CALL]),  # 2907
    (COHERE2_MOE, f"<|END_THINKING|>{R7B_CALL}", True, "", "", [CALL]),  # 2917
    (COHERE2_MOE, '<|END_THINKING|><|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "todo_list", '
     '"parameters": {"todos": ["buy milk", "walk dog"]}}\n]<|END_ACTION|>', True, "", "",
     [("todo_list", {"todos": ["buy milk", "walk dog"]})]),  # 2927
    (COHERE2_MOE, "I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n"
     '    {"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}},\n'
     '    {"tool_call_id": "1", "tool_name": "python", "parameters": {"code": "print(\'hey\')"}}\n]<|END_ACTION|>',
     True, "I'm\nthinking", "", [CALL, ("python", {"code": "print('hey')"})]),  # 2937
    (COMMAND_R_PLUS, f"<|CHATBOT_TOKEN|>{HELLO}<|END_OF_TURN_TOKEN|>", False, "", HELLO, []),  # 5894
    (COMMAND_R_PLUS, 'Action:\n```json\n[{"tool_name": "special_function", "parameters": {"arg1": 1}}]\n```',
     False, "", "", [CALL]),  # 5896
    # As the R+ template writes a history call, and a call to its built-in directly-answer (no tool here).
    (COMMAND_R_PLUS, 'Action:\n```json\n[\n    {\n        "tool_name": "special_function",\n        '
     '"parameters": {\n            "arg1": 1\n        }\n    }\n]```', False, "", "", [CALL]),
    (COMMAND_R_PLUS, "Action: is a word here, not a call.", False, "", "Action: is a word here, not a call.", []),
])
def test_cohere_reads_llama_cpp_outputs(fmt: ChatFormat, output: str, started: bool, reasoning: str, content: str,
                                        calls: list[object]) -> None:
    got = read(fmt, output, started=started)
    assert (got[0], got[1], decoded(got[2])) == (reasoning, content, calls)


def test_command_r7b_keeps_its_call_ids() -> None:  # message_assist_call_idx: id "0"; 2937: "0", "1"
    _, _, calls = read(COMMAND_R7B, R7B_CALL)
    assert [c.id for c in calls] == ["0"]


@pytest.mark.parametrize("fmt", [COMMAND_R7B, COHERE2_MOE])
def test_command_r7b_partial_call_has_name_and_id(fmt: ChatFormat) -> None:  # 2847, 2962
    _, content, calls = read(fmt, R7B_PARTIAL, cut=True)
    assert (content, [(c.name, c.arguments, c.id) for c in calls]) == ("", [("special_function", "", "0")])


def test_command_r7b_section_waits_for_its_end() -> None:
    syntax = COMMAND_R7B.tools
    for n in range(len(syntax.starts[0]), len(R7B_CALL)):
        assert syntax.section_end(R7B_CALL[:n]) is None, n
    assert syntax.section_end(R7B_CALL + "tail") == len(R7B_CALL)
    cut = R7B_CALL.replace("}}\n]<|END_ACTION|>", "")
    assert [(c.name, c.arguments) for c in syntax.parse_cut(cut, NAMES)] == [("special_function", '{"arg1": 1')]


def test_command_r_plus_section_ends_at_its_fence() -> None:
    syntax = COMMAND_R_PLUS.tools
    text = 'Action:\n```json\n[{"tool_name": "python", "parameters": {}}]\n```'
    for n in range(len("Action:"), len(text)):
        assert syntax.section_end(text[:n]) is None, n
    assert syntax.section_end(text + "\nMore") == len(text)


@pytest.mark.parametrize(("name", "fmt"), [
    ("CohereForAI-c4ai-command-r7b-12-2024-tool_use", COMMAND_R7B), ("Cohere2MoE", COHERE2_MOE),
    ("CohereForAI-c4ai-command-r-plus-tool_use", COMMAND_R_PLUS), ("openai-gpt-oss-120b", HARMONY),
    ("ibm-granite-granite-3.3-2B-Instruct", GRANITE_3), ("ibm-granite-granite-4.0", GRANITE_4),
    ("ibm-granite-granite-4.1", GRANITE_4),
])
def test_detected_from_the_template(name: str, fmt: ChatFormat) -> None:
    assert detect(template_source(name)).name == fmt.name


def test_cohere2_moe_prompt_opens_thinking_unless_effort_is_none() -> None:
    template = ChatTemplate(template_source("Cohere2MoE"), bos_token="", eos_token="")
    messages = [{"role": "user", "content": "Hi"}]
    assert COHERE2_MOE.starts_in_reasoning(template.render(messages))
    assert not COHERE2_MOE.starts_in_reasoning(template.render(messages, variables={"reasoning_effort": "none"}))


# --- Granite --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "output", "reasoning", "content", "calls"), [
    (GRANITE_3, HELLO, "", HELLO, []),  # 3369
    (GRANITE_3, f"<think>I'm\nthinking</think>{HELLO}", "I'm\nthinking", HELLO, []),  # 3371
    (GRANITE_3, f"<think>I'm\nthinking</think><response>{HELLO}</response>", "I'm\nthinking", HELLO, []),  # 3377
    (GRANITE_3, '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}]', "", "", [CALL]),
    (GRANITE_4, HELLO, "", HELLO, []),  # 3409, 3432
    (GRANITE_4, '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>', "", "",
     [CALL]),  # 3411, 3434
])
def test_granite_reads_llama_cpp_outputs(fmt: ChatFormat, output: str, reasoning: str, content: str,
                                         calls: list[object]) -> None:
    got = read(fmt, output)
    assert (got[0], got[1], decoded(got[2])) == (reasoning, content, calls)


def test_granite_3_cut_call() -> None:
    out = '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}, {"name": "python", "arguments": {"co'
    _, _, calls = read(GRANITE_3, out, cut=True)
    assert [(c.name, c.arguments) for c in calls] == [("special_function", '{"arg1": 1}'), ("python", '{"co')]


def test_granite_3_thinks_on_its_template_variable() -> None:
    template = ChatTemplate(template_source("ibm-granite-granite-3.3-2B-Instruct"),
                            bos_token="", eos_token="")
    assert "<think>" in template.render([{"role": "user", "content": "Hi"}], variables={"thinking": True})


# --- forced calls -----------------------------------------------------------------------------------

ALL = [HARMONY, COMMAND_R7B, COHERE2_MOE, COMMAND_R_PLUS, GRANITE_3, GRANITE_4]


def _rules(g: Grammar, names: list[str]) -> list[ToolRule]:
    schema = {"type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]}
    return [ToolRule(n, g.schema_rule(schema, doc_id=n, path="$"), schema, lambda s, p: g.base("value"))
            for n in names]


@pytest.mark.parametrize("max_calls", [1, 3])
@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_forced_calls_grammar_is_accepted(fmt: ChatFormat, max_calls: int) -> None:
    g = Grammar("tools")
    rule = fmt.tools.calls_rule(g, _rules(g, ["special_function", "special_function_with_opt", "python"]), max_calls)
    text = g.text(rule)
    assert text.startswith(f"root ::= {rule}")


@pytest.mark.parametrize(("fmt", "forced"), [
    (HARMONY, '<|channel|>commentary to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}'),
    (COMMAND_R7B, '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "special_function", "parameters": {"arg1": 1}}, '
                  '{"tool_call_id": "1", "tool_name": "special_function", "parameters": {"arg1": 1}}]<|END_ACTION|>'),
    (COMMAND_R_PLUS, 'Action:\n```json\n[{"tool_name": "special_function", "parameters": {"arg1": 1}}]\n```'),
    (GRANITE_3, '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}]'),
], ids=lambda x: x.name if isinstance(x, ChatFormat) else "")
def test_what_the_grammar_writes_reads_back(fmt: ChatFormat, forced: str) -> None:
    _, content, calls = read(fmt, forced, stream=True)
    assert content == "" and decoded(calls) == [CALL] * forced.count("special_function")
