"""The <tool_call> JSON families (formats/hermes_family.py), the XML function families (xml_function.py),
Apertus (apertus.py) and Nemotron Nano v2 (nemotron.py): detection from their templates, parsing, cut
parsing and forced-call grammars.

Cases ported from llama.cpp's tests/test-chat.cpp (llama-cpp-python 0.3.36's vendored copy, MIT), by line:
Qwen3.5 2148-2490, Nemotron 3 Nano 2697-2800, QwQ 3296-3305, Hermes 2 Pro 3330-3347, Seed-OSS
3445-3520, Qwen3-Coder 3552-3910, Apertus 5423-5428, Nemotron Nano v2 5851-5862, MiMo-VL / Hermes 3 /
Qwen 2.5 6101-6111. The templates in tests/data/templates/ are copies of its models/templates/.

Left out: the continuation cases (continue_final_message: prompt rendering, not parsing); the
reasoning_format NONE cases and the JSON-schema (invoice) cases (the generation core's, not a
format's); `expect_reconstruction` (llama.cpp re-renders the parsed message through the template);
the cases where a tool call ends a thinking block that was never closed (Qwen3.5 2316-2348, the
core's reasoning split decides that); and llama.cpp's schema-aware typing of values: a string-typed
parameter written `42` reads back as the number 42 here, since `parse` sees no schemas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nomoat.core.grammar_stacks import accepts
from nomoat.core.structured import Grammar
from nomoat.engine.chat_template import ChatTemplate
from nomoat.formats import ChatFormat, ToolRule, detect
from nomoat.formats.apertus import APERTUS
from nomoat.formats.hermes_family import HERMES_2_PRO, MIMO_VL, QWEN2_5, QWEN3, QWQ, SMOLLM3
from nomoat.formats.nemotron import NEMOTRON_V2
from nomoat.formats.xml_function import NEMOTRON_3, QWEN3_5, QWEN3_CODER, SEED_OSS

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
NAMES = {"special_function", "special_function_with_opt", "python", "edit", "html", "todo_list",
         "empty_args", "run_in_terminal", "tool_2req_4opt", "set_nullable_str", "set_union", "set_unit"}
CALL = ("special_function", {"arg1": 1})
THOUGHTS = "I'm\nthinking"
HELLO = "Hello, world!\nWhat's up?"


def read(fmt: ChatFormat, output: str, *, thinking: bool = False) -> tuple[str, str, list[tuple[str, Any]]]:
    """(reasoning, content, calls) of a whole output, as the generation core reads it with `fmt`:
    a thinking block first (open already if `thinking`), then content with sections of calls."""
    reasoning = ""
    r = fmt.reasoning
    if r is not None and output.lstrip().startswith(r.open):
        output, thinking = output.lstrip()[len(r.open):], True
    if r is not None and thinking and r.close in output:
        reasoning, output = output.split(r.close, 1)
    syntax, content, calls, pos = fmt.tools, [], [], 0
    while True:
        found = [i for i in (output.find(s, pos) for s in syntax.starts) if i >= 0]
        if not found:
            content.append(output[pos:])
            break
        start = min(found)
        content.append(output[pos:start])
        end = syntax.section_end(output[start:])
        section = output[start:] if end is None else output[start:start + end]
        parsed = syntax.parse(section, NAMES)
        if parsed is None:
            content.append(section)
        else:
            calls += [(c.name, json.loads(c.arguments)) for c in parsed]
        pos = start + len(section)
    return reasoning.strip(), "".join(content).strip(), calls


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.mark.parametrize(("name", "fmt"), [
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use", HERMES_2_PRO),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", HERMES_2_PRO),
    ("Qwen-Qwen2.5-7B-Instruct", QWEN2_5), ("Qwen-QwQ-32B", QWQ), ("Qwen-Qwen3-0.6B", QWEN3),
    ("HuggingFaceTB-SmolLM3-3B", SMOLLM3), ("MiMo-VL", MIMO_VL), ("Qwen3-Coder", QWEN3_CODER),
    ("Qwen3.5-4B", QWEN3_5), ("NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", NEMOTRON_3),
    ("ByteDance-Seed-OSS", SEED_OSS), ("Apertus-8B-Instruct", APERTUS), ("NVIDIA-Nemotron-Nano-v2", NEMOTRON_V2),
])
def test_detected_from_its_template(name: str, fmt: ChatFormat) -> None:
    assert detect(template(name)).name == fmt.name


# --- <tool_call> JSON blocks ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [HERMES_2_PRO, MIMO_VL, QWEN2_5, QWEN3])
def test_hermes_blocks(fmt: ChatFormat) -> None:
    block = '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>'
    assert read(fmt, HELLO) == ("", HELLO, [])
    assert read(fmt, block) == ("", "", [CALL])
    assert read(fmt, block.replace("}}\n", "}}")) == ("", "", [CALL])  # 3333
    assert read(fmt, HELLO + block) == ("", HELLO, [CALL])  # 3341


def test_qwq_thinks_in_a_block_its_template_opens() -> None:
    prompt = "<|im_start|>assistant\n<think>\n"
    assert QWQ.starts_in_reasoning(prompt)
    assert read(QWQ, "Let me think about this...\n</think>\nThe answer is 42.", thinking=True) == (
        "Let me think about this...", "The answer is 42.", [])
    assert read(QWQ, "</think>Hello, world!", thinking=True) == ("", "Hello, world!", [])


def test_qwen3_thoughts_then_a_call() -> None:
    block = '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>'
    out = f"<think>\n{THOUGHTS}\n</think>\n\n{block}"
    assert read(QWEN3, out) == (THOUGHTS, "", [CALL])
    assert HERMES_2_PRO.reasoning is None and SMOLLM3.native_tools is False


def test_hermes_cut() -> None:
    cut = QWEN3.tools.parse_cut('<tool_call>\n{"name": "special_function", "arguments": {"arg', NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg')]


# --- XML function calls -------------------------------------------------------------------------


def xml_call(name: str, params: dict[str, str], *, seed: bool = False) -> str:
    nl = "" if seed else "\n"
    body = "".join(f"<parameter={k}>{nl}{v}{nl}</parameter>\n" for k, v in params.items())
    tag = "seed:tool_call" if seed else "tool_call"
    return f"<{tag}>\n<function={name}>\n{body}</function>\n</{tag}>"


PYTHON_CODE = 'def hello():\n    print("Hello, world!")\n\nhello()'
QWEN_XML_CASES = [  # (output, calls): test-chat.cpp 2161-2300, 2697-2780, 3556-3900
    (xml_call("special_function", {"arg1": "1"}), [CALL]),
    (xml_call("special_function", {"arg1": "1"}) + "\n"
     + xml_call("special_function_with_opt", {"arg1": "1", "arg2": "2"}),
     [CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    (xml_call("python", {"code": PYTHON_CODE}), [("python", {"code": PYTHON_CODE})]),
    (xml_call("python", {"code": '    print("Hello, world!")'}), [("python", {"code": '    print("Hello, world!")'})]),
    (xml_call("edit", {"filename": "foo.c", "oldString": "#iclunde", "newString": "#include\n"}),
     [("edit", {"filename": "foo.c", "oldString": "#iclunde", "newString": "#include\n"})]),
    (xml_call("empty_args", {}), [("empty_args", {})]),
    (xml_call("python", {"code": "格"}), [("python", {"code": "格"})]),
    (xml_call("html", {"markup": "<html>\n <head>\n  <title>Hello!</title>\n </head>\n</html>"}),
     [("html", {"markup": "<html>\n <head>\n  <title>Hello!</title>\n </head>\n</html>"})]),
    (xml_call("todo_list", {"todos": '[{"item": "Check stuff", "selected": false}]'}),
     [("todo_list", {"todos": [{"item": "Check stuff", "selected": False}]})]),
    (xml_call("tool_2req_4opt", {"req2": "42", "req1": "hello", "opt2": "200"}),
     [("tool_2req_4opt", {"req2": 42, "req1": "hello", "opt2": 200})]),
    (xml_call("set_nullable_str", {"name": "hello world"}), [("set_nullable_str", {"name": "hello world"})]),
    (xml_call("set_nullable_str", {"name": "null"}), [("set_nullable_str", {"name": None})]),
    (xml_call("set_union", {"value": '{"a": 1}', "amount": "2 dollars"}),
     [("set_union", {"value": {"a": 1}, "amount": "2 dollars"})]),
    (xml_call("set_union", {"value": "{not valid json", "amount": "42"}),
     [("set_union", {"value": "{not valid json", "amount": 42})]),
    (xml_call("set_unit", {"unit": "celsius"}), [("set_unit", {"unit": "celsius"})]),
]


@pytest.mark.parametrize("fmt", [QWEN3_CODER, QWEN3_5, NEMOTRON_3])
@pytest.mark.parametrize(("output", "calls"), QWEN_XML_CASES)
def test_xml_function_calls(fmt: ChatFormat, output: str, calls: list[tuple[str, Any]]) -> None:
    assert read(fmt, output) == ("", "", calls)
    assert read(fmt, output + "\n") == ("", "", calls)  # Nemotron 3 ends its block with a newline (2716)


def test_xml_arguments_keep_llama_cpp_text() -> None:
    parsed = QWEN3_5.tools.parse(xml_call("edit", {"filename": "foo.c", "oldString": "#iclunde",
                                                   "newString": "#include"}), NAMES)
    assert parsed is not None
    assert parsed[0].arguments == '{"filename": "foo.c", "oldString": "#iclunde", "newString": "#include"}'


@pytest.mark.parametrize("fmt", [QWEN3_5, NEMOTRON_3])
def test_xml_thinking(fmt: ChatFormat) -> None:
    assert fmt.starts_in_reasoning("<|im_start|>assistant\n<think>\n")
    assert not fmt.starts_in_reasoning("<|im_start|>assistant\n<think></think>")
    assert read(fmt, f"{THOUGHTS}\n</think>\n\n{HELLO}", thinking=True) == (THOUGHTS, HELLO, [])
    call = xml_call("special_function", {"arg1": "1"})
    assert read(fmt, f"{THOUGHTS}\n</think>\n\n{call}", thinking=True) == (THOUGHTS, "", [CALL])
    assert read(fmt, f"</think>\n\nLet me inspect it.\n{call}", thinking=True) == ("", "Let me inspect it.", [CALL])


def test_qwen3_coder_may_leave_out_the_first_tool_call() -> None:
    bare = xml_call("special_function", {"arg1": "1"}).removeprefix("<tool_call>\n")
    assert read(QWEN3_CODER, bare) == ("", "", [CALL])  # 3569
    assert read(QWEN3_CODER, "Let me call it.\n" + bare) == ("", "Let me call it.", [CALL])  # 3579
    two = bare + "\n" + xml_call("special_function_with_opt", {"arg1": "1", "arg2": "2"})
    assert read(QWEN3_CODER, two)[2] == [CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]  # 3593
    # Without its </tool_call> the call still ends at </function>; what follows is content again.
    assert read(QWEN3_CODER, bare.removesuffix("</tool_call>") + "Done.") == ("", "Done.", [CALL])
    assert QWEN3_CODER.tools.section_end(bare.removesuffix("</tool_call>")) is None  # it may still come


def test_xml_not_calls_stay_content() -> None:
    unknown = xml_call("nope", {"a": "1"})
    assert read(QWEN3_5, unknown) == ("", unknown, [])
    broken = "<tool_call>\n<function=special_function>\nstray text\n</function>\n</tool_call>"
    assert read(QWEN3_5, broken) == ("", broken, [])


def test_seed_oss() -> None:
    call = xml_call("special_function", {"arg1": "1"}, seed=True)
    assert read(SEED_OSS, HELLO) == ("", HELLO, [])  # 3447
    assert read(SEED_OSS, "<seed:think>I'm thinking about the answer</seed:think>\nHello, world!") == (
        "I'm thinking about the answer", "Hello, world!", [])  # 3449
    assert read(SEED_OSS, call) == ("", "", [CALL])  # 3453
    two = call + "\n" + xml_call("special_function_with_opt", {"arg1": "1", "arg2": "2"}, seed=True)
    assert read(SEED_OSS, two)[2] == [CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]  # 3462
    todos = '[{"item": "Check stuff", "selected": false}, {"item": "Prepare stuff", "selected": true}]'
    assert read(SEED_OSS, xml_call("todo_list", {"todos": todos}, seed=True))[2] == [
        ("todo_list", {"todos": json.loads(todos)})]  # 3484
    old, new = 'def foo(arg = "14"):\n    return arg + "bar"\n', 'def foo(arg = "15"):\n    pass\n'
    edit = xml_call("edit", {"filename": "foo.cpp", "oldString": old, "newString": new}, seed=True)
    assert read(SEED_OSS, edit)[2] == [("edit", {"filename": "foo.cpp", "oldString": old, "newString": new})]  # 3497


@pytest.mark.parametrize(("section", "expected"), [
    ("<tool_call>\n<function=special_func", []),
    ("<tool_call>\n<function=special_function>\n", [("special_function", "{")]),
    ("<tool_call>\n<function=python>\n<parameter=code>\ndef hel", [("python", '{"code": "def hel')]),
    ("<tool_call>\n<function=special_function_with_opt>\n<parameter=arg1>\n1\n</parameter>\n<parameter=ar",
     [("special_function_with_opt", '{"arg1": 1')]),
])
def test_xml_cut(section: str, expected: list[tuple[str, str]]) -> None:
    assert [(c.name, c.arguments) for c in QWEN3_5.tools.parse_cut(section, NAMES)] == expected


def test_xml_cut_after_a_whole_call() -> None:
    section = xml_call("special_function", {"arg1": "1"}).removesuffix("</tool_call>")
    cut = QWEN3_CODER.tools.parse_cut(section.removeprefix("<tool_call>\n") + "\n<function=python>\n", NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1": 1}'), ("python", "{")]


# --- JSON lists: Apertus, Nemotron Nano v2 ------------------------------------------------------


def test_apertus() -> None:
    out = '<|tools_prefix|>[{"special_function": {"arg1": 1}}]<|tools_suffix|>'
    assert read(APERTUS, out) == ("", "", [CALL])  # 5424
    assert read(APERTUS, f"<|inner_prefix|>{THOUGHTS}<|inner_suffix|>{HELLO}") == (THOUGHTS, HELLO, [])
    two = '<|tools_prefix|>[{"special_function": {"arg1": 1}}, {"python": {"code": "x"}}]<|tools_suffix|>'
    assert read(APERTUS, two)[2] == [CALL, ("python", {"code": "x"})]
    assert read(APERTUS, out.replace("special_function", "nope"))[2] == []
    cut = APERTUS.tools.parse_cut('<|tools_prefix|>[{"special_function": {"arg1": 1}}, {"python": {"co', NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1": 1}'), ("python", '{"co')]
    assert APERTUS.tools.parse_cut('<|tools_prefix|>[{"speci', NAMES) == []


def test_nemotron_v2() -> None:
    calls = '<TOOLCALL>[{"name": "special_function", "arguments": {"arg1": 1}}]</TOOLCALL>'
    assert read(NEMOTRON_V2, f"{THOUGHTS}\n</think>\n{calls}", thinking=True) == (THOUGHTS, "", [CALL])  # 5852
    assert read(NEMOTRON_V2, f"<think>{THOUGHTS}\n</think>\n\n{calls}\n") == (THOUGHTS, "", [CALL])  # 5858
    cut = NEMOTRON_V2.tools.parse_cut('<TOOLCALL>[{"name": "special_function", "arguments": {"arg', NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg')]
    assert NEMOTRON_V2.tools.parse("<TOOLCALL>[not json]</TOOLCALL>", NAMES) is None


# --- forced calls ------------------------------------------------------------------------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "special_function": {"type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]},
    "special_function_with_opt": {"type": "object", "properties": {"arg1": {"type": "integer"},
                                                                   "arg2": {"type": "integer"}}, "required": ["arg1"]},
    "edit": {"type": "object", "properties": {"filename": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
             "required": ["filename"]},
    "empty_args": {"type": "object", "properties": {}},
}


def tool_rules(g: Grammar) -> list[ToolRule]:
    def value(schema: Any, name: str) -> str:
        return g.schema_rule(schema, doc_id=f"value-{name}", path=name)
    return [ToolRule(name, g.schema_rule(schema, doc_id=name, path=""), schema, value)
            for name, schema in SCHEMAS.items()]




FORCED = [  # (format, texts the grammar must accept, texts it must refuse)
    (QWEN3_5, [xml_call("special_function", {"arg1": "1"}),
               xml_call("special_function", {"arg1": "1"}) + "\n" + xml_call("empty_args", {}),
               xml_call("edit", {"filename": "a <b> c\nd", "unit": "f"}),
               xml_call("special_function_with_opt", {"arg1": "1", "arg2": "2"})],
     [xml_call("special_function", {"arg1": "x"}), xml_call("edit", {"filename": "a</b>"}),
      xml_call("special_function", {})]),
    (SEED_OSS, [xml_call("special_function", {"arg1": "1"}, seed=True), xml_call("edit", {"filename": "x\n"}, seed=True)],
     [xml_call("special_function", {"arg1": "1"})]),
    (QWEN3, ['<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>'], []),
    (APERTUS, ['<|tools_prefix|>[{"special_function": {"arg1": 1}}, {"empty_args": {}}]<|tools_suffix|>'],
     ['<|tools_prefix|>[]<|tools_suffix|>']),
    (NEMOTRON_V2, ['<TOOLCALL>[{"name": "special_function", "arguments": {"arg1": 1}}]</TOOLCALL>'],
     ['<TOOLCALL>[{"name": "python", "arguments": {}}]</TOOLCALL>']),
]


@pytest.mark.parametrize(("fmt", "good", "bad"), FORCED, ids=[f[0].name for f in FORCED])
def test_forced_calls_grammar(fmt: ChatFormat, good: list[str], bad: list[str]) -> None:
    g = Grammar("tools")
    text = g.text(fmt.tools.calls_rule(g, tool_rules(g), 3))  # refused if it keeps many parses alive
    for sample in good:
        assert accepts(text, sample), sample
        assert read(fmt, sample)[2], sample
    for sample in bad:
        assert not accepts(text, sample), sample


def test_one_forced_call_is_one_block() -> None:
    g = Grammar("tools")
    text = g.text(QWEN3_CODER.tools.calls_rule(g, tool_rules(g)[:1], 1))
    one = xml_call("special_function", {"arg1": "1"})
    assert accepts(text, one) and not accepts(text, one + "\n" + one)


# --- the templates render what the formats read ------------------------------------------------

RENDERED = [
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", HERMES_2_PRO), ("Qwen-Qwen2.5-7B-Instruct", QWEN2_5),
    ("Qwen-QwQ-32B", QWQ), ("Qwen-Qwen3-0.6B", QWEN3), ("MiMo-VL", MIMO_VL), ("Qwen3-Coder", QWEN3_CODER),
    ("Qwen3.5-4B", QWEN3_5), ("NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", NEMOTRON_3), ("ByteDance-Seed-OSS", SEED_OSS),
    ("Apertus-8B-Instruct", APERTUS), ("NVIDIA-Nemotron-Nano-v2", NEMOTRON_V2),
]


@pytest.mark.parametrize(("name", "fmt"), RENDERED, ids=[r[0] for r in RENDERED])
def test_a_rendered_call_reads_back(name: str, fmt: ChatFormat) -> None:
    """The history's call, as the template writes it, is a section the format parses to the same call."""
    chat = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    tools = [{"type": "function", "function": {"name": "special_function", "description": "I'm special",
                                               "parameters": SCHEMAS["special_function"]}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "special_function", "arguments": '{"arg1": 1}'}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    prompt = chat.render(messages, tools=tools)
    start = max(prompt.rfind(s) for s in fmt.tools.starts)
    end = fmt.tools.section_end(prompt[start:])
    assert end is not None
    parsed = fmt.tools.parse(prompt[start:start + end], NAMES)
    assert parsed is not None and [(c.name, json.loads(c.arguments)) for c in parsed] == [CALL]


@pytest.mark.parametrize(("name", "fmt"), [("Qwen-QwQ-32B", QWQ), ("Qwen3.5-4B", QWEN3_5),
                                           ("NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", NEMOTRON_3)])
def test_templates_that_open_the_thinking_block(name: str, fmt: ChatFormat) -> None:
    chat = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    messages = [{"role": "user", "content": "Hi"}]
    assert fmt.starts_in_reasoning(chat.render(messages, variables={"enable_thinking": True}))
    assert not fmt.starts_in_reasoning(chat.render(messages, variables={"enable_thinking": False}))
