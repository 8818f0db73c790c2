"""GigaChat 3 / 3.1, Reka Edge, Ling 3.0, MiniCPM 5, Muse Glimmer, Tencent Hy3, Solar Open and StepFun 3.5:
detection, parsing, cut parsing and forced calls.

The parse cases are llama.cpp's, from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp/tests/test-chat.cpp:
Ling 3.0 4656-4835, Reka Edge 5306-5396 and 6122-6164, Muse Glimmer 6353-6420, StepFun 3.5 Flash 6604-6788 (read
as Qwen3.5: its template writes the same <function=> calls and opens <think>, and llama.cpp reads it with the
same qwen3-coder parser), GigaChat V3 6814-6840 and V3.1 6842-6868, MiniCPM5 6870-6930. Each case runs through
the generation core (core/reading.py's Reading), whole and streamed a character at a time. Hy3 and Solar Open
have no parse cases there (only 7499/7501, reasoning effort): their cases here read back what their own
templates render for a call. The templates in tests/data/templates/ are copies of its models/templates/.

Left out:
- the continuation cases (continue_final_message, a prefilled assistant turn): a prompt feature, not a parse;
- expect_reconstruction (GigaChat: rendering the parsed message back): the templates' job;
- StepFun 6615 and 6703-6737 (a string-typed parameter written `5123123` or `"foo"` stays that text): llama.cpp's
  schema-aware typing; `parse` sees no schemas, so such a value reads as the JSON it spells (as test_formats_d.py);
- Muse Glimmer's json_schema cases (6395-6410) are ported as plain content: response formats are the core's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.chat_formats import read_both

from nomoat.core.gbnf_rules import Parser
from nomoat.core.grammar_stacks import _Machine
from nomoat.core.structured import Grammar
from nomoat.core.tools import Tool, ToolPlan
from nomoat.engine.chat_template import ChatTemplate
from nomoat.formats import ChatFormat, ToolRule, detect
from nomoat.formats.gigachat import GIGACHAT_3, GIGACHAT_3_1, V3_OPEN
from nomoat.formats.hermes_family import QWQ
from nomoat.formats.hy3 import HY3
from nomoat.formats.ling import LING_3
from nomoat.formats.minicpm import MINICPM5
from nomoat.formats.muse import MUSE_GLIMMER
from nomoat.formats.solar import SOLAR_OPEN
from nomoat.formats.xml_function import QWEN3_5

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
S, N, OBJ = {"type": "string"}, {"type": "integer"}, {"type": "object", "properties": {}}
SCHEMAS: dict[str, dict[str, Any]] = {
    "special_function": {"type": "object", "properties": {"arg1": N}, "required": ["arg1"]},
    "special_function_with_opt": {"type": "object", "properties": {"arg1": N, "arg2": N}, "required": ["arg1"]},
    "get_time": {"type": "object", "properties": {"city": S}, "required": ["city"]},
    "python": {"type": "object", "properties": {"code": S}, "required": ["code"]},
    "html": {"type": "object", "properties": {"markup": S}, "required": ["markup"]},
    "magic_int": {"type": "object", "properties": {"ref": N, "name": S}, "required": ["ref"]},
    "amount": {"type": "object", "properties": {"orig": {"type": "number"}}, "required": ["orig"]},
    "imaginary_number": {"type": "object", "properties": {"number": {"type": "object"}}, "required": ["number"]},
    "string_param": {"type": "object", "properties": {"text": S}, "required": ["text"]},
    "tool_2req_4opt": {"type": "object", "properties": {"req1": S, "req2": N, "opt1": S, "opt2": N},
                       "required": ["req1", "req2"]},
    "set_nullable_str": {"type": "object", "properties": {"name": {"type": ["string", "null"]}}, "required": ["name"]},
    "set_union": {"type": "object", "properties": {"value": {"anyOf": [S, OBJ]}, "amount": {"anyOf": [S, N]}}},
    "empty_args": OBJ, "empty_args_no_schema": OBJ,
}
NAMES = set(SCHEMAS)
PLAN = ToolPlan(tuple(Tool(n, "", s) for n, s in SCHEMAS.items()), "auto")
CALL = [("special_function", {"arg1": 1})]
PARIS = [("get_time", {"city": "Paris"})]
HELLO = "Hello, world!\nWhat's up?"

DETECTED = {
    "GigaChat3-10B-A1.8B": GIGACHAT_3, "GigaChat3.1-10B-A1.8B": GIGACHAT_3_1, "Reka-Edge": QWQ,
    "inclusionai-ling-3.0-flash": LING_3, "openbmb-MiniCPM5-1B": MINICPM5, "muse-glimmer": MUSE_GLIMMER,
    "tencent-Hy3": HY3, "upstage-Solar-Open-100B": SOLAR_OPEN, "StepFun3.5-Flash": QWEN3_5,
}


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_detected_from_its_template(name: str) -> None:
    assert detect(template(name)).name == DETECTED[name].name


def test_rwkv_has_no_tool_syntax() -> None:
    assert detect(template("llama-cpp-rwkv-world")).name == "generic"


def read(fmt: ChatFormat, started: bool | None, output: str) -> tuple[str, str, list[Any]]:
    return read_both(fmt, started, output, PLAN)


def hermes(name: str, args: str, nl: str = "") -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}{nl}</tool_call>'


def ling(name: str, *pairs: tuple[str, str]) -> str:
    return f"<tool_call>{name}\n" + "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n"
                                           for k, v in pairs) + "</tool_call>"


def xml(name: str, *pairs: tuple[str, str]) -> str:  # Qwen3.5's <function=> calls (StepFun)
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in pairs)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def minicpm(name: str, *pairs: tuple[str, str]) -> str:
    return f'<function name="{name}">' + "".join(f'<param name="{k}">{v}</param>' for k, v in pairs) + "</function>"


ATEM = ('<atem:function_calls>\n<atem:invoke name="special_function">\n<atem:parameter name="arg1">1</atem:parameter>\n'
        "</atem:invoke>\n</atem:function_calls>")
GIGA_3 = V3_OPEN + '{"name": "special_function", "arguments": {"arg1": 1}}'
GIGA_31 = '<|function_call|>{"name": "special_function", "arguments": {"arg1": 1}}'
TIME = ling("get_time", ("city", "Paris"))
THOUGHTS: tuple[str, str, list[Any]] = ("I'm\nthinking", HELLO, [])
INVOICE = '{"amount": 123.45, "date": "2025-12-03"}'

CASES = [  # (format, whether the prompt opened the thinking, output, (reasoning, content, calls)); test-chat.cpp lines
    (GIGACHAT_3, False, HELLO, ("", HELLO, [])),  # 6817
    (GIGACHAT_3, False, GIGA_3, ("", "", CALL)),  # 6818
    (GIGACHAT_3, False, HELLO + GIGA_3, ("", HELLO, CALL)),  # 6824
    (GIGACHAT_3_1, False, HELLO, ("", HELLO, [])),  # 6845
    (GIGACHAT_3_1, False, GIGA_31, ("", "", CALL)),  # 6846
    (GIGACHAT_3_1, False, HELLO + GIGA_31, ("", HELLO, CALL)),  # 6852
    (QWQ, False, HELLO, ("", HELLO, [])),  # Reka 5311, 6125
    (QWQ, False, hermes("special_function", '{"arg1": 1}'), ("", "", CALL)),  # 5314
    (QWQ, False, hermes("get_time", '{"city": "XYZCITY"}'), ("", "", [("get_time", {"city": "XYZCITY"})])),  # 5321
    (QWQ, True, "I'm\nthinking\n</think>\n\n" + hermes("special_function", '{"arg1": 1}'),  # 5328, 6141
     ("I'm\nthinking", "", CALL)),
    (QWQ, False, hermes("special_function", '{"arg1": 1}') + hermes("special_function_with_opt", '{"arg1": 1, "arg2": 2}'),
     ("", "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),  # 5336
    (QWQ, True, "I need to call a function\n</think>\n\nLet me check the time."  # 5351
     + hermes("get_time", '{"city": "XYZCITY"}'),
     ("I need to call a function", "Let me check the time.", [("get_time", {"city": "XYZCITY"})])),
    (QWQ, False, hermes("empty_args", "{}"), ("", "", [("empty_args", {})])),  # 5370
    (QWQ, False, hermes("empty_args_no_schema", "{}"), ("", "", [("empty_args_no_schema", {})])),  # 5377
    (QWQ, True, "Let me think about " + hermes("special_function", '{"arg1": 2}') + " hmm\n</think>\n\n"  # 5384
     + hermes("special_function", '{"arg1": 1}'),
     ("Let me think about " + hermes("special_function", '{"arg1": 2}') + " hmm", "", CALL)),
    (QWQ, True, "I'm\nthinking\n</think>\n\n" + HELLO, THOUGHTS),  # 6129
    (QWQ, False, hermes("special_function", '{"arg1": 1}', "\n"), ("", "", CALL)),  # 6133
    (QWQ, False, HELLO + "\n" + hermes("special_function", '{"arg1": 1}', "\n"), ("", HELLO, CALL)),  # 6137
    (QWQ, False, hermes("special_function", '{"arg1": 1}', "\n") + "\n"  # 6147
     + hermes("special_function_with_opt", '{"arg1": 1, "arg2": 2}', "\n"),
     ("", "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    (LING_3, True, "I need to check the time first.\n" + TIME, ("I need to check the time first.", "", PARIS)),  # 4666
    (LING_3, True, "Let me check the time.\n</think>\nChecking it now.\n" + TIME,  # 4675
     ("Let me check the time.", "Checking it now.", PARIS)),
    (LING_3, True, TIME + "\nThe time has been checked.", ("", "The time has been checked.", PARIS)),  # 4684
    (LING_3, True, "</think>\n" + TIME + "\n" + TIME, ("", "", PARIS * 2)),  # 4691
    (LING_3, True, "check this\n</think>\n" + ling("tool_2req_4opt", ("req1", "contains </think> and <tool_call> strings"),
                                                  ("req2", "1")),  # 4703
     ("check this", "", [("tool_2req_4opt", {"req1": "contains </think> and <tool_call> strings", "req2": 1})])),
    (LING_3, None, "I need to check the time first.\n" + TIME, ("", "I need to check the time first.", PARIS)),  # 4717
    (LING_3, False, "Here is the answer.\nNo think block at all.", ("", "Here is the answer.\nNo think block at all.", [])),
    (LING_3, False, TIME, ("", "", PARIS)),  # 4734
    (LING_3, False, "Here is the answer.<|role_end|>", ("", "Here is the answer.", [])),  # 4744
    (LING_3, True, TIME + "<|role_end|>", ("", "", PARIS)),  # 4750
    (LING_3, True, "</think>\n<tool_call>get_time<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>",
     ("", "", PARIS)),  # 4758
    (LING_3, True, "</think>\n" + ling("tool_2req_4opt", ("req2", "7"), ("req1", "hello")),  # 4765
     ("", "", [("tool_2req_4opt", {"req2": 7, "req1": "hello"})])),
    (LING_3, True, "</think>\n" + ling("tool_2req_4opt", ("req1", "hello"), ("req2", "7"), ("opt1", "extra")),  # 4775
     ("", "", [("tool_2req_4opt", {"req1": "hello", "req2": 7, "opt1": "extra"})])),
    (LING_3, True, "</think>\n" + ling("magic_int", ("ref", "42")), ("", "", [("magic_int", {"ref": 42})])),  # 4786
    *[(LING_3, True, "</think>\n" + ling("set_nullable_str", ("name", raw)), ("", "", [("set_nullable_str", {"name": v})]))
      for raw, v in (("null", None), ("hello world", "hello world"), ("123 Main St", "123 Main St"))],  # 4794-4815
    (LING_3, True, "</think>\n" + ling("set_union", ("value", '{"a": 1}'), ("amount", "7")),  # 4819
     ("", "", [("set_union", {"value": {"a": 1}, "amount": 7})])),
    (LING_3, True, "</think>\n" + ling("set_union", ("value", "plain text"), ("amount", "1abc")),  # 4829
     ("", "", [("set_union", {"value": "plain text", "amount": "1abc"})])),
    (MINICPM5, False, HELLO, ("", HELLO, [])),  # 6874
    (MINICPM5, False, minicpm("python", ("code", "print('Hello, World!')")),  # 6880
     ("", "", [("python", {"code": "print('Hello, World!')"})])),
    (MINICPM5, False, '<function name="empty_args"></function>', ("", "", [("empty_args", {})])),  # 6887
    (MINICPM5, False, minicpm("html", ("markup", '<![CDATA[<a href="/x">hi</a> </param>]]>')),  # 6902
     ("", "", [("html", {"markup": '<a href="/x">hi</a> </param>'})])),
    (MINICPM5, True, "I'm thinking</think>" + minicpm("python", ("code", "print('hey')")),  # 6909
     ("I'm thinking", "", [("python", {"code": "print('hey')"})])),
    (MINICPM5, False, minicpm("python", ("code", "print('x')")) + "\n" + minicpm("python", ("code", "print('y')")),  # 6917
     ("", "", [("python", {"code": "print('x')"}), ("python", {"code": "print('y')"})])),
    (MUSE_GLIMMER, False, " to=user<|message|>" + HELLO + "<|eot|>", ("", HELLO, [])),  # 6365
    (MUSE_GLIMMER, False, " to=special_function<|message|>" + ATEM, ("", "", CALL)),  # 6372
    (MUSE_GLIMMER, False, f" to=user<|message|>{HELLO}<|eom|><|start|>assistant to=special_function<|message|>{ATEM}",
     ("", HELLO, CALL)),  # 6380
    (MUSE_GLIMMER, False, f" to=user<|message|>You invoke it like this:\n{ATEM}<|eot|>",  # 6391: quoted, no call
     ("", f"You invoke it like this:\n{ATEM}", [])),
    (MUSE_GLIMMER, False, " to=user<|message|>" + INVOICE, ("", INVOICE, [])),  # 6398
    (MUSE_GLIMMER, False, " to=self<|message|>I need to output the invoice details in JSON<|eom|>"  # 6405
     "<|start|>assistant to=user<|message|>" + INVOICE, ("I need to output the invoice details in JSON", INVOICE, [])),
    (MUSE_GLIMMER, False, f" to=self<|message|>I could use {ATEM} here<|eom|><|start|>assistant to=user<|message|>"
     "Hello!<|eot|>", (f"I could use {ATEM} here", "Hello!", [])),  # 6413
    (QWEN3_5, True, "I was thinking\n</think>\nNow I'm not.", ("I was thinking", "Now I'm not.", [])),  # StepFun 6607
    *[(QWEN3_5, True, f"{why}\n</think>\n{xml(name, *pairs)}", (why, "", [(name, args)])) for why, name, pairs, args in (
        ("Let me call the special function", "special_function", [("arg1", "42555916")], {"arg1": 42555916}),  # 6634
        ("Let me call the special function with opt", "special_function_with_opt", [("arg1", "42555916")],
         {"arg1": 42555916}),  # 6650
        ("Let me call the magic_int function", "magic_int", [("ref", "42555916"), ("name", "baz")],
         {"ref": 42555916, "name": "baz"}),  # 6666
        ("Call string_param with empty text", "string_param", [("text", "")], {"text": ""}),  # 6683
        ("Test negative number", "magic_int", [("ref", "-14")], {"ref": -14}),  # 6739
        ("Test decimal number", "amount", [("orig", "3.14")], {"orig": 3.14}),  # 6755
        ("Test imaginary number", "imaginary_number", [("number", '{ "real": 3.14, "imaginary": 2.71 }')],
         {"number": {"real": 3.14, "imaginary": 2.71}}),  # 6771
    )],
]


@pytest.mark.parametrize(("fmt", "started", "output", "expected"), CASES)
def test_llama_cpp_cases(fmt: ChatFormat, started: bool | None, output: str, expected: Any) -> None:
    assert read(fmt, started, output) == expected


HY3_CALL = ("<tool_calls:opensource>\n<tool_call:opensource>magic_int<tool_sep:opensource>\n"
            "<arg_key:opensource>ref</arg_key:opensource>\n<arg_value:opensource>42</arg_value:opensource>\n"
            "<arg_key:opensource>name</arg_key:opensource>\n<arg_value:opensource>foo bar</arg_value:opensource>\n"
            "</tool_call:opensource>\n</tool_calls:opensource>")
SOLAR_CALL = ('<|tool_calls|><|tool_call:begin|>a1b2c3d4e5<|tool_call:name|>special_function<|tool_call:args|>'
              '{"arg1": 1}<|tool_call:end|>')
OWN_CASES = [  # the families without llama.cpp cases, as their templates write a turn
    (HY3, False, HELLO, ("", HELLO, [])),
    (HY3, True, "I'm\nthinking</think:opensource>" + HELLO, THOUGHTS),
    (HY3, True, "I'm\nthinking</think:opensource>" + HY3_CALL,
     ("I'm\nthinking", "", [("magic_int", {"ref": 42, "name": "foo bar"})])),
    (SOLAR_OPEN, False, "<|content|>" + HELLO + "<|end|>", ("", HELLO, [])),
    (SOLAR_OPEN, False, "<|think|>I'm\nthinking<|end|><|begin|>assistant<|content|>" + HELLO + "<|end|>", THOUGHTS),
    (SOLAR_OPEN, False, "<|think|>I'm\nthinking<|end|><|begin|>assistant" + SOLAR_CALL + "<|calls|>",
     ("I'm\nthinking", "", CALL)),
    (SOLAR_OPEN, False, SOLAR_CALL + SOLAR_CALL.replace("<|tool_calls|>", "").replace("a1", "f6"), ("", "", CALL * 2)),
    (SOLAR_OPEN, False, SOLAR_CALL + "\nDone.", ("", "Done.", CALL)),
    (MINICPM5, False, minicpm("html", ("markup", "<![CDATA[</function>]]>")), ("", "", [("html", {"markup": "</function>"})])),
]


@pytest.mark.parametrize(("fmt", "started", "output", "expected"), OWN_CASES)
def test_own_cases(fmt: ChatFormat, started: bool | None, output: str, expected: Any) -> None:
    assert read(fmt, started, output) == expected


def test_call_ids_kept() -> None:  # Solar's calls carry their own ids
    assert [c.id for c in SOLAR_OPEN.tools.parse(SOLAR_CALL, NAMES) or []] == ["a1b2c3d4e5"]


def cut(fmt: ChatFormat, section: str) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in fmt.tools.parse_cut(section, NAMES)]


def test_cut_calls_keep_what_was_written() -> None:
    # Reka 5363, 6157 (message_assist_call_cutoff_args)
    assert cut(QWQ, '<tool_call>\n{"name": "special_function", "arguments": {"arg') == [("special_function", '{"arg')]
    assert cut(GIGACHAT_3, GIGA_3[:GIGA_3.index("1}")]) == [("special_function", '{"arg1":')]
    assert cut(GIGACHAT_3_1, GIGA_31[:GIGA_31.index("special") + 3]) == []
    assert cut(LING_3, "<tool_call>magic_int\n<arg_key>ref</arg_key>\n<arg_value>4</arg_value>\n<arg_key>na") == [
        ("magic_int", '{"ref": 4}')]
    assert cut(MINICPM5, '<function name="magic_int"><param name="ref">4</param><param name="name">fo') == [
        ("magic_int", '{"ref": 4}')]
    assert cut(MINICPM5, '<function name="magic_i') == []
    assert cut(MUSE_GLIMMER, "<|start|>assistant to=special_function<|message|>" + ATEM[:ATEM.index("1<")]) == [
        ("special_function", "{}")]
    assert cut(HY3, HY3_CALL[:HY3_CALL.index("foo")]) == [("magic_int", '{"ref": 42}')]
    assert cut(SOLAR_OPEN, SOLAR_CALL[:SOLAR_CALL.index("1}")]) == [("special_function", '{"arg1":')]
    assert cut(SOLAR_OPEN, SOLAR_CALL[:SOLAR_CALL.index("special") + 3]) == []


def test_cut_in_thinking_keeps_the_reasoning() -> None:
    assert read(LING_3, True, "Still <tool_ca") == ("Still <tool_ca", "", [])
    assert read(MUSE_GLIMMER, False, " to=self<|message|>Still thinking") == ("Still thinking", "", [])


def test_unknown_tools_and_non_calls_are_content() -> None:
    assert GIGACHAT_3_1.tools.parse(GIGA_31.replace("special_function", "nope"), NAMES) is None
    assert read(GIGACHAT_3_1, False, "<|function_call|>not json") == ("", "<|function_call|>not json", [])
    assert MINICPM5.tools.parse(minicpm("nope", ("a", "1")), NAMES) is None
    assert SOLAR_OPEN.tools.parse(SOLAR_CALL.replace("special_function", "nope"), NAMES) is None
    assert HY3.tools.parse(HY3_CALL.replace("magic_int", "nope"), NAMES) is None


# --- forced calls: the grammar writes the native syntax, and what it writes parses back ------------

def grammar(fmt: ChatFormat, names: list[str], max_calls: int) -> str:
    g = Grammar("tools")
    rules = []
    for i, name in enumerate(names):
        doc = f"tool{i}"
        args = g.schema_rule(SCHEMAS[name], doc_id=doc, path="", param=f"tools[{i}]")
        rules.append(ToolRule(name, args, SCHEMAS[name],
                              lambda s, k, d=doc: g.property_rule(s, doc_id=d, path=f"/properties/{k}")))
    return str(g.text(fmt.tools.calls_rule(g, rules, max_calls)))  # raises if the grammar keeps many parses alive


def accepts(text: str, output: str) -> bool:
    """Whether llama.cpp's grammar stacks (grammar_stacks.py's model of them) accept `output` whole."""
    parser = Parser(text)
    machine = _Machine(parser.parse(), parser.ids["root"], list(parser.tokens))
    stacks = machine.start()
    for ch in output:
        machine.work = 0
        stacks = machine.accept(stacks, ord(ch))
        if not stacks:
            return False
    return () in stacks


MAGIC = [("magic_int", {"ref": 42, "name": "foo bar"})]
FORCED: list[tuple[ChatFormat, str, list[Any]]] = [
    (GIGACHAT_3, GIGA_3, CALL),
    (GIGACHAT_3_1, GIGA_31, CALL),
    (LING_3, ling("magic_int", ("ref", "42"), ("name", "foo bar")) + "\n" + ling("empty_args"),
     [*MAGIC, ("empty_args", {})]),
    (MINICPM5, minicpm("magic_int", ("ref", "42"), ("name", "foo bar")) + "\n" + minicpm("special_function", ("arg1", "1")),
     [*MAGIC, *CALL]),
    (MUSE_GLIMMER, " to=special_function<|message|>" + ATEM, CALL),
    (HY3, HY3_CALL, MAGIC),
    (SOLAR_OPEN, SOLAR_CALL + SOLAR_CALL.replace("<|tool_calls|>", ""), CALL * 2),
]
FORCED_TOOLS = ["special_function", "get_time", "magic_int", "empty_args"]


@pytest.mark.parametrize(("fmt", "output", "calls"), FORCED, ids=[f[0].name for f in FORCED])
def test_forced_calls_are_native_and_parse_back(fmt: ChatFormat, output: str, calls: list[Any]) -> None:
    assert accepts(grammar(fmt, FORCED_TOOLS, 2), output)
    assert read(fmt, False, output) == ("", "", calls)


@pytest.mark.parametrize(("fmt", "output"), [(f, o) for f, o, c in FORCED if c == CALL],
                         ids=[f[0].name for f in FORCED if f[2] == CALL])
def test_forced_call_refuses_another_tool_or_bad_arguments(fmt: ChatFormat, output: str) -> None:
    text = grammar(fmt, ["special_function"], 1)
    assert accepts(text, output)
    assert not accepts(text, output.replace("special_function", "get_time"))
    assert not accepts(text, output.replace("1", '"one"'))


FORCED_FORMATS = sorted({f.name: f for f, _, _ in FORCED}.values(), key=lambda f: str(f.name))


@pytest.mark.parametrize("fmt", FORCED_FORMATS, ids=[f.name for f in FORCED_FORMATS])
def test_grammar_builds_for_every_schema(fmt: ChatFormat) -> None:
    grammar(fmt, sorted(SCHEMAS), 3)


# --- templates: the history call each renders reads back; thinking opened by the prompt --------------

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Time in Tokyo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "Tokyo"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"},
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "description": "time", "parameters": SCHEMAS["get_time"]}}]


def render(name: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    chat = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    return str(chat.render(json.loads(json.dumps(messages)), tools=TOOLS, variables=variables))


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_history_call_reads_back(name: str) -> None:
    """The call the template renders in the history is one the format reads (from its first start marker
    after the user's question: the system prompt's instructions show the syntax too)."""
    prompt, syntax = render(name, CONVERSATION, enable_thinking=False), DETECTED[name].tools
    prompt = prompt[prompt.index("Time in Tokyo?"):]
    start = min(i for i in (prompt.find(s) for s in syntax.starts) if i >= 0)
    end = syntax.section_end(prompt[start:])
    calls = syntax.parse(prompt[start:] if end is None else prompt[start:start + end], NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in calls or []] == [("get_time", {"city": "Tokyo"})]


OPENS_THINKING = [  # (template, variables that open the block, variables that do not)
    ("Reka-Edge", {"enable_thinking": True}, {"enable_thinking": False}),
    ("inclusionai-ling-3.0-flash", {"enable_thinking": True}, {"enable_thinking": False}),
    ("openbmb-MiniCPM5-1B", {"enable_thinking": True}, {"enable_thinking": False}),
    ("tencent-Hy3", {"reasoning_effort": "high"}, {}),
    ("StepFun3.5-Flash", {"enable_thinking": True}, None),
]


@pytest.mark.parametrize(("name", "on", "off"), OPENS_THINKING, ids=[o[0] for o in OPENS_THINKING])
def test_thinking_opened_by_the_prompt(name: str, on: dict[str, Any], off: dict[str, Any] | None) -> None:
    fmt = DETECTED[name]
    assert fmt.starts_in_reasoning(render(name, CONVERSATION[:2], **on))
    if off is not None:
        assert not fmt.starts_in_reasoning(render(name, CONVERSATION[:2], **off))


@pytest.mark.parametrize("name", ["GigaChat3-10B-A1.8B", "GigaChat3.1-10B-A1.8B", "muse-glimmer", "upstage-Solar-Open-100B"])
def test_prompt_leaves_no_block_open(name: str) -> None:
    assert not DETECTED[name].starts_in_reasoning(render(name, CONVERSATION[:2], enable_thinking=True))
