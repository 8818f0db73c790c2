"""LFM2 / LFM2.5 (formats/lfm2.py), MiniMax M1 and M3 (minimax_m1.py), Kimi K3 (kimi_k3.py) and Apriel 1.5 / 1.6
(apriel.py): detection from their templates, parsing whole and streamed, cut parsing and forced-call grammars.

The parse cases are llama.cpp's, from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp/tests/test-chat.cpp:
LFM2 2014-2125 (test_lfm2_parser, run for LFM2-8B-A1B, LFM2.5-Instruct and LFM2.5-8B-A1B) and the LFM2.5-8B-A1B
thinking cases 5235-5275, Kimi K3 4862-4960, MiniMax M3 5484-5830, Apriel 1.5 6188-6196 and 1.6 6206-6226.
MiniMax M1 has none: its cases are what its template writes. Each runs through the generation core
(core/reading.py's Reading), whole and streamed a character at a time.

Left out:
- the continuation cases (a prefilled assistant message: a prompt feature) and expect_reconstruction (templates');
- M3's "a union with a string alternative keeps structured text as the string" (5784): llama.cpp reads the
  schema; `parse` sees none, so nested tags there read as an object;
- Apriel 1.6's expected reasoning begins "Here are my reasoning steps:\\n", which the prompt wrote, not the
  model: here the reasoning is the model's text only (6212, 6220).
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
from nomoat.formats.apriel import APRIEL
from nomoat.formats.kimi_k3 import KIMI_K3
from nomoat.formats.lfm2 import LFM2, LFM2_THINKING
from nomoat.formats.minimax_m1 import MINIMAX_M1, MINIMAX_M3, NS

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
S, N = {"type": "string"}, {"type": "integer"}


def obj(props: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required)}


B, NUM, ARR, OBJ = ({"type": t} for t in ("boolean", "number", "array", "object"))
SCHEMAS: dict[str, dict[str, Any]] = {
    "special_function": obj({"arg1": N}, "arg1"), "special_function_with_opt": obj({"arg1": N, "arg2": N}, "arg1"),
    "get_time": obj({"city": S}, "city"), "get_weather": obj({"city": S}, "city"), "python": obj({"code": S}, "code"),
    "toggle": obj({"enabled": B}, "enabled"), "set_nullable": obj({"value": {"type": ["string", "null"]}}, "value"),
    "set_config": obj({"config": OBJ}, "config"), "empty_args": obj({}), "magic_int": obj({"ref": N, "name": S}, "ref"),
    "Calendar.create_event": obj({"title": S, "participants": {"type": "array", "items": S}, "metadata": OBJ}, "title"),
    "amount": obj({"orig": NUM}, "orig"), "imaginary_number": obj({"number": obj({"real": NUM, "imaginary": NUM})}),
    "nested_args": obj({"tags": ARR, "entries": ARR}), "union_args": obj({"filter": {}, "limit": {}, "label": {}}),
    "pick": obj({"mode": {"enum": ["fast", "slow"]}, "n": N, "tag": S}),
}
NAMES = set(SCHEMAS)
PLAN = ToolPlan(tuple(Tool(n, "", s) for n, s in SCHEMAS.items()), "auto")
CALL, HELLO = [("special_function", {"arg1": 1})], "Hello, world!\nWhat's up?"

DETECTED = {
    "LFM2-8B-A1B": LFM2, "LFM2.5-Instruct": LFM2, "LFM2.5-8B-A1B": LFM2_THINKING, "MiniMax-M1": MINIMAX_M1,
    "MiniMax-M3": MINIMAX_M3, "Kimi-K3": KIMI_K3, "unsloth-Apriel-1.5": APRIEL, "Apriel-1.6-15b-Thinker-fixed": APRIEL,
}


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_detected_from_its_template(name: str) -> None:
    assert detect(template(name)).name == DETECTED[name].name


def read(fmt: ChatFormat, started: bool, output: str) -> tuple[str, str, list[Any]]:
    return read_both(fmt, started, output, PLAN, strip=True)


def lfm(calls: str) -> str:
    return f"<|tool_call_start|>[{calls}]<|tool_call_end|>"


LFM_CASES = [  # 2018-2121: (output, content, calls)
    (HELLO, HELLO, []),
    (lfm("special_function(arg1=1)"), "", CALL),
    (lfm('get_time(city="XYZCITY")'), "", [("get_time", {"city": "XYZCITY"})]),
    (lfm("toggle(enabled=True)"), "", [("toggle", {"enabled": True})]),
    (lfm("set_nullable(value=None)"), "", [("set_nullable", {"value": None})]),
    (lfm('set_config(config={"enabled": True, "count": 3})'), "",
     [("set_config", {"config": {"enabled": True, "count": 3}})]),
    (lfm('set_config(config={"enabled": true, "note": null})'), "",
     [("set_config", {"config": {"enabled": True, "note": None}})]),
    (lfm('Calendar.create_event(title="demo", participants=["Alice", "Bob"], metadata={"priority": "high", '
         '"reminder": true})'), "", [("Calendar.create_event", {"title": "demo", "participants": ["Alice", "Bob"],
                                                                "metadata": {"priority": "high", "reminder": True}})]),
    ("Use this format: [link text](url). Example: [Wikipedia](https://www.wikipedia.org).",
     "Use this format: [link text](url). Example: [Wikipedia](https://www.wikipedia.org).", []),
    (lfm("python(code=\"def hello():\\n    print('hey')\")"), "", [("python", {"code": "def hello():\n    print('hey')"})]),
    (lfm('python(code="First line\\nSecond line\\tindented")'), "", [("python", {"code": "First line\nSecond line\tindented"})]),
    (lfm('python(code="print(\\"hi\\")")'), "", [("python", {"code": 'print("hi")'})]),
    ("Let me check the time." + lfm('get_time(city="Paris")'), "Let me check the time.", [("get_time", {"city": "Paris"})]),
    (lfm("special_function(arg1=1), special_function_with_opt(arg1=1, arg2=2)"), "",
     [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    (lfm("empty_args()"), "", [("empty_args", {})]),
    (lfm("get_time(city='Oslo')"), "", [("get_time", {"city": "Oslo"})]),  # Python's quotes, as its template writes
]


@pytest.mark.parametrize("fmt", [LFM2, LFM2_THINKING], ids=lambda f: f.name)
@pytest.mark.parametrize(("output", "content", "calls"), LFM_CASES)
def test_lfm2_cases(fmt: ChatFormat, output: str, content: str, calls: list[Any]) -> None:
    assert read(fmt, False, output) == ("", content, calls)


def test_lfm2_thinking_cases() -> None:  # 5241-5275
    think = "<think>I'm\nthinking</think>"
    assert read(LFM2_THINKING, False, think + lfm("special_function(arg1=1)")) == ("I'm\nthinking", "", CALL)
    assert read(LFM2_THINKING, False, "<think>I need to call a function</think>Let me check the time."
                + lfm('get_time(city="Paris")')) == ("I need to call a function", "Let me check the time.",
                                                     [("get_time", {"city": "Paris"})])
    fake = "Let me think about " + lfm("special_function(arg1=1)") + " hmm"
    assert read(LFM2_THINKING, False, f"<think>{fake}</think>" + lfm("special_function(arg1=1)")) == (fake, "", CALL)
    assert read(LFM2_THINKING, False, think + HELLO) == ("I'm\nthinking", HELLO, [])
    assert read(LFM2, False, think + HELLO) == ("", think + HELLO, [])  # no thinking marker in its templates


def test_lfm2_cut_and_not_calls() -> None:
    cut = LFM2.tools.parse_cut("<|tool_call_start|>[special_function(arg1=", NAMES)  # 2111
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1": ')]
    cut = LFM2.tools.parse_cut("<|tool_call_start|>[special_function(arg1=1), magic_int(ref=4, name='a", NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1": 1}'), ("magic_int", '{"ref": 4, "name": \'a')]
    assert LFM2.tools.parse_cut("<|tool_call_start|>[special_fu", NAMES) == []
    for bad in ("[special_function(arg1=x)]", "[special_function(1)]", "special_function(arg1=1)", "[nope(a=1)]"):
        assert LFM2.tools.parse(f"<|tool_call_start|>{bad}<|tool_call_end|>", NAMES) is None


# --- MiniMax M1 and M3 -------------------------------------------------------------------------------

JSON_CALLS = ['{"name": "special_function", "arguments": {"arg1": 1}}', '{"name": "get_time", "arguments": {"city": "Oslo"}}']
M1_CALLS = "<tool_calls>\n" + "\n".join(JSON_CALLS) + "\n</tool_calls>"


def test_minimax_m1() -> None:
    assert read(MINIMAX_M1, False, f"<think>\nI'm\nthinking\n</think>\n\n{HELLO}") == ("I'm\nthinking", HELLO, [])
    assert read(MINIMAX_M1, False, "<think>Two calls</think>\nOn it." + M1_CALLS) == (
        "Two calls", "On it.", [*CALL, ("get_time", {"city": "Oslo"})])
    cut = MINIMAX_M1.tools.parse_cut(M1_CALLS[:M1_CALLS.index('"Oslo"') + 3], NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1": 1}'), ("get_time", '{"city": "Os')]
    assert MINIMAX_M1.tools.parse('<tool_calls>\n{"name": "nope", "arguments": {}}\n</tool_calls>', NAMES) is None


def m3(*invokes: str) -> str:
    return f"{NS}<tool_call>\n" + "".join(f'{NS}<invoke name="{i}{NS}</invoke>\n' for i in invokes) + f"{NS}</tool_call>"


def tag(key: str, value: str) -> str:
    return f"{NS}<{key}>{value}{NS}</{key}>"


def mm(thought: str, *invokes: str) -> str:
    return f"<mm:think>{thought}</mm:think>" + m3(*invokes)


M3_CASES = [  # 5494-5808: (output, (reasoning, content, calls))
    ("</mm:think>" + HELLO, ("", HELLO, [])),
    ("<mm:think>I'm\nthinking</mm:think>" + HELLO, ("I'm\nthinking", HELLO, [])),
    (mm("Let me check the time", 'get_time">' + tag("city", "Tokyo")),
     ("Let me check the time", "", [("get_time", {"city": "Tokyo"})])),
    ("</mm:think>" + m3('special_function">' + tag("arg1", "1")), ("", "", CALL)),
    (mm("Let's call a tool:", 'empty_args">'), ("Let's call a tool:", "", [("empty_args", {})])),
    (mm("Calling both", 'get_time">' + tag("city", "Paris"), 'get_weather">' + tag("city", "Paris")),
     ("Calling both", "", [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})])),
    ("<mm:think>Thinking about it</mm:think>Let me call the function." + m3('special_function">' + tag("arg1", "1")),
     ("Thinking about it", "Let me call the function.", CALL)),
    (mm("Test negative", 'magic_int">' + tag("ref", "-14")), ("Test negative", "", [("magic_int", {"ref": -14})])),
    (mm("Test decimal", 'amount">' + tag("orig", "3.14")), ("Test decimal", "", [("amount", {"orig": 3.14})])),
    (mm("Test boolean", 'toggle">' + tag("enabled", "true")), ("Test boolean", "", [("toggle", {"enabled": True})])),
    (mm("Multi-arg call", 'magic_int">' + tag("ref", "42") + tag("name", "foo bar")),
     ("Multi-arg call", "", [("magic_int", {"ref": 42, "name": "foo bar"})])),
    (mm("Nested object", 'imaginary_number">' + tag("number", tag("real", "1.5") + tag("imaginary", "-2.5"))),
     ("Nested object", "", [("imaginary_number", {"number": {"real": 1.5, "imaginary": -2.5}})])),
    (mm("Nested arrays", 'nested_args">' + tag("tags", tag("item", "alpha") + tag("item", "beta"))
        + tag("entries", tag("item", tag("id", "1") + tag("label", "one")))),
     ("Nested arrays", "", [("nested_args", {"tags": ["alpha", "beta"], "entries": [{"id": 1, "label": "one"}]})])),
    (mm("Union array", 'union_args">' + tag("filter", tag("item", "alpha") + tag("item", "beta"))),
     ("Union array", "", [("union_args", {"filter": ["alpha", "beta"]})])),
    (mm("Union scalar", 'union_args">' + tag("limit", "5")), ("Union scalar", "", [("union_args", {"limit": 5})])),
    (mm("Union nested", 'union_args">' + tag("limit", tag("max", "10"))),
     ("Union nested", "", [("union_args", {"limit": {"max": 10}})])),
    (mm("Union string", 'union_args">' + tag("label", "hi")), ("Union string", "", [("union_args", {"label": "hi"})])),
    (mm("", 'get_time">' + tag("city", "XYZCITY")), ("", "", [("get_time", {"city": "XYZCITY"})])),
]


@pytest.mark.parametrize(("output", "expected"), M3_CASES)
def test_minimax_m3_cases(output: str, expected: Any) -> None:
    assert read(MINIMAX_M3, False, output) == expected


def test_minimax_m3_cut_keeps_closed_parameters() -> None:
    text = m3('magic_int">' + tag("ref", "4") + tag("name", "x y"))
    cut = MINIMAX_M3.tools.parse_cut(text[:text.index("x y") + 1], NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in cut] == [("magic_int", {"ref": 4})]
    assert MINIMAX_M3.tools.parse(text[:text.index("x y") + 1] + f"{NS}</invoke>\n{NS}</tool_call>", NAMES) is None


# --- Kimi K3 ---------------------------------------------------------------------------------------

RESPONSE_END, MESSAGE_END = "<|close|>response<|sep|>", "<|close|>message<|sep|>"


def xtml(*calls: tuple[str, str]) -> str:
    body = "".join(f'<|open|>call tool="{name}" index="{i}"<|sep|>{args}<|close|>call<|sep|>'
                   for i, (name, args) in enumerate(calls, 1))
    return f"<|open|>tools<|sep|>{body}<|close|>tools<|sep|>{MESSAGE_END}"


def arg(key: str, kind: str, value: str) -> str:
    return f'<|open|>argument key="{key}" type="{kind}"<|sep|>{value}<|close|>argument<|sep|>'


K3_ONE = xtml(("special_function", arg("arg1", "number", "1")))
K3_PY = xtml(("python", arg("code", "string", "print('hey')")))
K3_TYPED = xtml(("magic_int", arg("ref", "number", "7") + arg("name", "string", "123")))
K3_OPT = ("special_function_with_opt", arg("arg1", "number", "1") + arg("arg2", "number", "2"))
K3_CASES = [  # 4866-4960: (started, output, (reasoning, content, calls))
    (False, f"<|open|>response<|sep|>{HELLO}{RESPONSE_END}{MESSAGE_END}", ("", HELLO, [])),
    (True, f"I'm thinking about this<|close|>think<|sep|><|open|>response<|sep|>{HELLO}{RESPONSE_END}{MESSAGE_END}",
     ("I'm thinking about this", HELLO, [])),
    (False, f"<|open|>response<|sep|>Use the response tag, then message the handler.{RESPONSE_END}{MESSAGE_END}",
     ("", "Use the response tag, then message the handler.", [])),
    (True, "I was still thinking when the budget ran out", ("I was still thinking when the budget ran out", "", [])),
    (False, f"<|open|>response<|sep|>{RESPONSE_END}{K3_ONE}", ("", "", CALL)),
    (True, f"I should call it<|close|>think<|sep|><|open|>response<|sep|>On it.{RESPONSE_END}{K3_ONE}",
     ("I should call it", "On it.", CALL)),
    (False, f"<|open|>response<|sep|>{RESPONSE_END}{xtml(K3_OPT)}",
     ("", "", [("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    (False, f"<|open|>response<|sep|>{RESPONSE_END}{xtml(('special_function', arg('arg1', 'number', '1')), K3_OPT)}",
     ("", "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    (False, f"<|open|>response<|sep|>{RESPONSE_END}{K3_PY}",
     ("", "", [("python", {"code": "print('hey')"})])),
    (False, f"<|open|>response<|sep|>{RESPONSE_END}{K3_TYPED}",
     ("", "", [("magic_int", {"ref": 7, "name": "123"})])),  # a string's text stays text
]


@pytest.mark.parametrize(("started", "output", "expected"), K3_CASES)
def test_kimi_k3_cases(started: bool, output: str, expected: Any) -> None:
    assert read(KIMI_K3, started, output) == expected


def test_kimi_k3_cut_and_json_block() -> None:
    cut = KIMI_K3.tools.parse_cut(K3_ONE[:K3_ONE.index("1<|close|>argument")], NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", "{}")]
    block = xtml(("get_time", '<|open|>json type="object"<|sep|>{"city": "Oslo"}<|close|>json<|sep|>'))
    assert [(c.name, c.arguments) for c in KIMI_K3.tools.parse(block, NAMES) or []] == [("get_time", '{"city": "Oslo"}')]
    assert KIMI_K3.tools.parse(xtml(("nope", "")), NAMES) is None


# --- Apriel ----------------------------------------------------------------------------------------

APRIEL_CALL = '<tool_calls>[{"name": "special_function", "arguments": {"arg1": 1}}]</tool_calls>'
APRIEL_CASES = [  # 6191-6220: (started, output, (reasoning, content, calls))
    (False, HELLO, ("", HELLO, [])),
    (False, APRIEL_CALL, ("", "", CALL)),
    (True, f"I'm\nthinking\n[BEGIN FINAL RESPONSE]\n{HELLO}", ("I'm\nthinking", HELLO, [])),
    (True, f"I'm\nthinking\n[BEGIN FINAL RESPONSE]\n{APRIEL_CALL}", ("I'm\nthinking", "", CALL)),
    (False, f"Here are my reasoning steps:\nI'm\nthinking\n[BEGIN FINAL RESPONSE]\n{HELLO}\n[END FINAL RESPONSE]",
     ("I'm\nthinking", HELLO, [])),  # 1.5 writes the opening line itself, and closes its answer
    (False, '<tool_calls>[\n  {"name": "special_function", "arguments": {"arg1": 1}},\n  {"name": "get_time", '
            '"arguments": {"city": "Oslo"}}\n]</tool_calls>', ("", "", [*CALL, ("get_time", {"city": "Oslo"})])),
]


@pytest.mark.parametrize(("started", "output", "expected"), APRIEL_CASES)
def test_apriel_cases(started: bool, output: str, expected: Any) -> None:
    assert read(APRIEL, started, output) == expected


def test_apriel_cut() -> None:
    cut = APRIEL.tools.parse_cut(APRIEL_CALL[:APRIEL_CALL.index("1}")], NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1":')]
    assert APRIEL.tools.parse_cut('<tool_calls>[{"name": "special_fu', NAMES) == []


# --- forced calls: the grammar writes the native syntax, and what it writes parses back ------------

def grammar(fmt: ChatFormat, names: list[str], max_calls: int) -> str:
    g = Grammar("tools")
    rules = []
    for i, name in enumerate(names):
        doc = f"tool{i}"
        args = g.schema_rule(SCHEMAS[name], doc_id=doc, path="", param=f"tools[{i}]")
        rules.append(ToolRule(name, args, SCHEMAS[name],
                              lambda s, k, d=doc: g.property_rule(s, doc_id=d, path=f"/properties/{k}")))
    text: str = g.text(fmt.tools.calls_rule(g, rules, max_calls))  # raises if the grammar keeps many parses alive
    return text


def accepts(text: str, output: str) -> bool:
    """Whether llama.cpp's grammar stacks (grammar_stacks.py's model of them) accept `output` whole."""
    parser = Parser(text)
    machine = _Machine(parser.parse(), parser.ids["root"], list(parser.tokens))
    stacks = machine.start()
    for ch in output:
        machine.work = 0  # the model's search budget is per search, not per string
        stacks = machine.accept(stacks, ord(ch))
        if not stacks:
            return False
    return () in stacks


FORCED = [
    (LFM2, lfm('special_function(arg1=1), get_time(city="Oslo")'), [*CALL, ("get_time", {"city": "Oslo"})]),
    (LFM2, lfm('pick(n=2, tag="x")'), [("pick", {"n": 2, "tag": "x"})]),
    (MINIMAX_M1, M1_CALLS, [*CALL, ("get_time", {"city": "Oslo"})]),
    (MINIMAX_M3, m3('special_function">' + tag("arg1", "1"), 'get_time">' + tag("city", "Oslo")),
     [*CALL, ("get_time", {"city": "Oslo"})]),
    (MINIMAX_M3, m3('pick">' + tag("mode", '"fast"') + tag("tag", "a b")), [("pick", {"mode": "fast", "tag": "a b"})]),
    (KIMI_K3, xtml(("special_function", arg("arg1", "number", "1")), ("get_time", arg("city", "string", "Oslo")))
     .removesuffix(MESSAGE_END), [*CALL, ("get_time", {"city": "Oslo"})]),
    (KIMI_K3, xtml(("pick", '<|open|>argument key="mode"<|sep|>"slow"<|close|>argument<|sep|>'))
     .removesuffix(MESSAGE_END), [("pick", {"mode": "slow"})]),
    (APRIEL, "<tool_calls>[" + ", ".join(JSON_CALLS) + "]</tool_calls>", [*CALL, ("get_time", {"city": "Oslo"})]),
]
FORCED_TOOLS = ["special_function", "get_time", "pick", "empty_args"]


@pytest.mark.parametrize(("fmt", "output", "calls"), FORCED, ids=[f"{f[0].name}-{i}" for i, f in enumerate(FORCED)])
def test_forced_calls_are_native_and_parse_back(fmt: ChatFormat, output: str, calls: list[Any]) -> None:
    text = grammar(fmt, FORCED_TOOLS, 2)
    assert accepts(text, output)
    assert read(fmt, False, output) == ("", "", calls)


ONE_CALL = [
    (LFM2, lfm("special_function(arg1=1)")), (MINIMAX_M3, m3('special_function">' + tag("arg1", "1"))),
    (KIMI_K3, K3_ONE.removesuffix(MESSAGE_END)), (APRIEL, APRIEL_CALL),
    (MINIMAX_M1, '<tool_calls>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_calls>'),
]


@pytest.mark.parametrize(("fmt", "output"), ONE_CALL, ids=[f.name for f, _ in ONE_CALL])
def test_forced_call_refuses_another_tool_or_bad_arguments(fmt: ChatFormat, output: str) -> None:
    text = grammar(fmt, ["special_function"], 1)
    assert accepts(text, output)
    assert not accepts(text, output.replace("special_function", "get_time"))
    assert not accepts(text, output.replace("1", '"one"'))


@pytest.mark.parametrize("fmt", sorted({f.name: f for f in DETECTED.values()}.values(), key=lambda f: f.name),
                         ids=lambda f: str(getattr(f, "name", f)))
def test_grammar_builds_for_every_schema(fmt: ChatFormat) -> None:
    grammar(fmt, sorted(SCHEMAS), 3)


# --- templates: the history renders the call; which prompts leave the thinking open -----------------

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Time in Tokyo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "Tokyo"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"},
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "description": "time", "parameters": SCHEMAS["get_time"]}}]
# LFM2-8B-A1B and LFM2.5-Instruct render an assistant message's content only, never its calls.
NO_CALLS_IN_HISTORY = {"LFM2-8B-A1B", "LFM2.5-Instruct"}
OPENS_THINKING = {"Kimi-K3", "Apriel-1.6-15b-Thinker-fixed"}


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_templates_render_the_call_and_open_the_thinking(name: str) -> None:
    chat = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    prompt = chat.render(json.loads(json.dumps(CONVERSATION)), tools=TOOLS, variables={"enable_thinking": True})
    assert "12:00" in prompt and '\\"city' not in prompt
    assert ("Tokyo" in prompt.split("Time in Tokyo?", 1)[1]) == (name not in NO_CALLS_IN_HISTORY)
    assert DETECTED[name].starts_in_reasoning(prompt) == (name in OPENS_THINKING)
