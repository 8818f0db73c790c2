"""DeepSeek (R1, V3.1, V3.2, V4), Kimi K2, GLM 4.6 / 4.7 and MiniMax M2: detection, parsing and forced calls.

The parse cases are llama.cpp's, from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp/tests/test-chat.cpp:
DeepSeek V3.1 3919-3993, V3.2 4005-4224, V4 4231-4367, V4-Flash 4370-4383, GLM-4.6 4388-4396,
GLM-4.7-Flash 4401-4496, Spark2.5 4503-4599 (GLM 4.7's syntax), Kimi-K2-Thinking 4968-5181, Kimi-K2 /
K2-Instruct 5184-5204, MiniMax-M2 5442-5482, R1 5989-6100. Each case runs through the generation core
(core/reading.py's Reading), whole and streamed a character at a time, into what llama.cpp expects.

Left out:
- the continuation cases (continue_final_message, a prefilled assistant message): a prompt feature, not a parse;
- expect_reconstruction (rendering the parsed message back to the same text): the templates' job;
- the GLM-4.7 error-message case (4600-4646), about llama.cpp's own exception text;
- Kimi K3 (4866-), MiniMax M3 (5490-): other syntaxes (M1 too, no cases), left to the generic format;
- Ling 3.0 (4656-): it tags arguments like GLM but calls from inside its thinking; not claimed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.chat_formats import forced_grammar, read_both

from nomoat.core.grammar_stacks import accepts
from nomoat.core.tools import Tool, ToolPlan
from nomoat.engine.chat_template import ChatTemplate
from nomoat.formats import ChatFormat, detect
from nomoat.formats.deepseek import DEEPSEEK_R1, DEEPSEEK_V3_1, DEEPSEEK_V3_2, DEEPSEEK_V4
from nomoat.formats.glm import GLM_4_6, GLM_4_7, TAGGED
from nomoat.formats.kimi import KIMI_K2
from nomoat.formats.minimax import MINIMAX_M2

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
S = {"type": "string"}
N = {"type": "integer"}
SCHEMAS: dict[str, dict[str, Any]] = {
    "special_function": {"type": "object", "properties": {"arg1": N}, "required": ["arg1"]},
    "special_function_with_opt": {"type": "object", "properties": {"arg1": N, "arg2": N}, "required": ["arg1"]},
    "get_time": {"type": "object", "properties": {"city": S}, "required": ["city"]},
    "get_weather": {"type": "object", "properties": {"city": S}, "required": ["city"]},
    "python": {"type": "object", "properties": {"code": S}, "required": ["code"]},
    "html": {"type": "object", "properties": {"markup": S}, "required": ["markup"]},
    "magic_int": {"type": "object", "properties": {"ref": N, "name": S}, "required": ["ref"]},
    "amount": {"type": "object", "properties": {"orig": {"type": "number"}}, "required": ["orig"]},
    "toggle": {"type": "object", "properties": {"enabled": {"type": "boolean"}}, "required": ["enabled"]},
    "todo_list": {"type": "object", "properties": {"todos": {"type": "array"}}, "required": ["todos"]},
    "set_config": {"type": "object", "properties": {"config": {"type": "object"}}, "required": ["config"]},
    "empty_args": {"type": "object", "properties": {}},
    "read_file_diff_md": {"type": "object", "properties": {"review_id": S, "file_id": S}},
    "nested_args": {"type": "object", "properties": {"tags": {"type": "array"}, "entries": {"type": "array"}}},
    "execute_command": {"type": "object", "properties": {"command": S, "cwd": S, "timeout": N}, "required": ["command"]},
}
NAMES = set(SCHEMAS)
CALL = [("special_function", {"arg1": 1})]

DETECTED = {
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": DEEPSEEK_R1, "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": DEEPSEEK_R1,
    "llama-cpp-deepseek-r1": DEEPSEEK_R1, "deepseek-ai-DeepSeek-V3.1": DEEPSEEK_V3_1,
    "deepseek-ai-DeepSeek-V3.2": DEEPSEEK_V3_2, "deepseek-ai-DeepSeek-V4": DEEPSEEK_V4,
    "deepseek-ai-DeepSeek-V4-Flash-0731": DEEPSEEK_V4, "moonshotai-Kimi-K2": KIMI_K2, "Kimi-K2-Instruct": KIMI_K2,
    "Kimi-K2-Thinking": KIMI_K2, "GLM-4.6": GLM_4_6, "GLM-4.7-Flash": GLM_4_7, "MiniMax-M2": MINIMAX_M2,
    "Spark2.5": TAGGED, "poolside-Laguna-S-2.1": TAGGED, "poolside-Laguna-XS-2.1": TAGGED,
}


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_detected_from_its_template(name: str) -> None:
    assert detect(template(name)).name == DETECTED[name].name


@pytest.mark.parametrize("name", ["Kimi-K3", "MiniMax-M3", "MiniMax-M1", "inclusionai-ling-3.0-flash"])
def test_other_syntaxes_are_not_claimed(name: str) -> None:
    """Family members that write another syntax are not read as these formats."""
    assert detect(template(name)).name not in {f.name for f in DETECTED.values()}


def read(fmt: ChatFormat, started: bool, output: str) -> tuple[str, str, list[Any]]:
    return read_both(fmt, started, output, PLAN)


PLAN = ToolPlan(tuple(Tool(n, "", s) for n, s in SCHEMAS.items()), "auto")
HELLO = "Hello, world!\nWhat's up?"
THOUGHTS = "I'm\nthinking</think>" + HELLO
V31 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>{}<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
R1_CALL = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n"
           "```json\n{\"arg1\": 1}```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def dsml(block: str, *invokes: str) -> str:
    return f"<｜DSML｜{block}>\n" + "".join(invokes) + f"</｜DSML｜{block}>"


def invoke(name: str, *params: tuple[str, str, str]) -> str:
    inner = "".join(f'<｜DSML｜parameter name="{k}" string="{s}">{v}</｜DSML｜parameter>\n' for k, s, v in params)
    return f'<｜DSML｜invoke name="{name}">\n{inner}</｜DSML｜invoke>\n'


def kimi(*calls: tuple[str, str]) -> str:
    body = "".join(f"<|tool_call_begin|>functions.{i}<|tool_call_argument_begin|>{a}<|tool_call_end|>" for i, a in calls)
    return f"<|tool_calls_section_begin|>{body}<|tool_calls_section_end|>"


DSML_CASES = [  # V3.2 4005-4224; V4 4231-4352 repeats them with the tool_calls block: (before the block, invokes, calls)
    ("Let me check the time</think>\n\n", [invoke("get_time", ("city", "true", "Tokyo"))], [("get_time", {"city": "Tokyo"})]),
    ("", [invoke("special_function", ("arg1", "false", "1"))], CALL),
    ("Calling both</think>\n\n", [invoke(n, ("city", "true", "Paris")) for n in ("get_time", "get_weather")],
     [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})]),
    ("Thinking about it</think>Let me call the function.\n\n", [invoke("special_function", ("arg1", "false", "1"))], CALL),
    ("Test negative</think>\n\n", [invoke("magic_int", ("ref", "false", "-14"))], [("magic_int", {"ref": -14})]),
    ("Test decimal</think>\n\n", [invoke("amount", ("orig", "false", "3.14"))], [("amount", {"orig": 3.14})]),
    ("Test boolean</think>\n\n", [invoke("toggle", ("enabled", "false", "true"))], [("toggle", {"enabled": True})]),
    ("Test array</think>\n\n", [invoke("todo_list", ("todos", "false", '["buy milk","walk dog"]'))],
     [("todo_list", {"todos": ["buy milk", "walk dog"]})]),
    ("Test object</think>\n\n", [invoke("set_config", ("config", "false", '{"theme":"dark","level":2}'))],
     [("set_config", {"config": {"theme": "dark", "level": 2}})]),
    ("</think>\n\n", [invoke("get_time", ("city", "true", "XYZCITY"))], [("get_time", {"city": "XYZCITY"})]),
    ("Multi-arg call</think>\n\n", [invoke("magic_int", ("ref", "false", "42"), ("name", "true", "foo bar"))],
     [("magic_int", {"ref": 42, "name": "foo bar"})]),
]
GLM_CASES = [  # GLM-4.7-Flash 4419-4481 (read by each format that writes this syntax): (started, output, read)
    (False, "<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>", ("", "", CALL)),
    (True, "I'm\nthinking</think><tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>",
     ("I'm\nthinking", "", CALL)),
    (False, "<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>"
     "<tool_call>special_function_with_opt<arg_key>arg1</arg_key><arg_value>1</arg_value>"
     "<arg_key>arg2</arg_key><arg_value>2</arg_value></tool_call>",
     ("", "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),
    (True, "Let me read the diff content.</think><tool_call>read_file_diff_md</tool_call>",
     ("Let me read the diff content.", "", [("read_file_diff_md", {})])),
    (False, "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>",  # 4.6: 4389
     ("", "", CALL)),
    (True, THOUGHTS, ("I'm\nthinking", HELLO, [])),
    (False, HELLO, ("", HELLO, [])),
]
K_CALLS = ('<|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|>'
           '<|tool_call_begin|>functions.python:1<|tool_call_argument_begin|>{"code": "print(\'hey\')"}<|tool_call_end|>')
K_READ = ("I need to call two functions", "", [*CALL, ("python", {"code": "print('hey')"})])
V4_CALL = dsml("tool_calls", invoke("get_time", ("city", "true", "Tokyo")))
SPARK = ("Preparing updates.<tool_call>magic_int<arg_key>ref</arg_key><arg_value>42</arg_value>"
         "<arg_key>name</arg_key><arg_value>上海</arg_value></tool_call>"
         "<tool_call>amount<arg_key>orig</arg_key><arg_value>2.5</arg_value></tool_call>"
         "<tool_call>toggle<arg_key>enabled</arg_key><arg_value>true</arg_value></tool_call>"
         "<tool_call>set_config<arg_key>config</arg_key><arg_value>"
         '{"source": "spark", "options": {"strict": true}}</arg_value></tool_call>'
         '<tool_call>nested_args<arg_key>tags</arg_key><arg_value>["alpha", "测试"]</arg_value>'
         '<arg_key>entries</arg_key><arg_value>[{"id": 1, "label": "first"}, {"id": 2, "label": "第二"}]'
         "</arg_value></tool_call><tool_call>empty_args</tool_call>")
SPARK_READ = ("", "Preparing updates.", [
    ("magic_int", {"ref": 42, "name": "上海"}), ("amount", {"orig": 2.5}), ("toggle", {"enabled": True}),
    ("set_config", {"config": {"source": "spark", "options": {"strict": True}}}),
    ("nested_args", {"tags": ["alpha", "测试"], "entries": [{"id": 1, "label": "first"}, {"id": 2, "label": "第二"}]}),
    ("empty_args", {})])
KIMI_ONE = kimi(("special_function:0", '{"arg1": 1}'))
CASES = [  # (format, whether the prompt opened the thinking, output, (reasoning, content, calls)); test-chat.cpp lines
    (DEEPSEEK_R1, True, THOUGHTS, ("I'm\nthinking", HELLO, [])),  # 5994
    (DEEPSEEK_R1, True, "</think>" + HELLO, ("", HELLO, [])),  # 5990
    (DEEPSEEK_R1, True, "</think>" + R1_CALL, ("", "", CALL)),  # 6028
    (DEEPSEEK_R1, False, R1_CALL, ("", "", CALL)),  # 6073
    (DEEPSEEK_V3_1, False, V31.format("get_time", '{"city": "XYZCITY"}'), ("", "", [("get_time", {"city": "XYZCITY"})])),
    (DEEPSEEK_V3_1, True, "REASONING</think>" + V31.format("get_time", '{"city": "Tokyo"}'),  # 3953
     ("REASONING", "", [("get_time", {"city": "Tokyo"})])),
    (DEEPSEEK_V3_1, True, "REASONING</think>CONTENT<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>"  # 3965
     '{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
     "<｜tool▁calls▁end｜>", ("REASONING", "CONTENT", [("get_time", {"city": "Paris"}), ("get_weather", {"city": "Paris"})])),
    (DEEPSEEK_V3_1, True, "REASONING</think>\nCONTENT", ("REASONING", "CONTENT", [])),  # 3983
    (DEEPSEEK_V3_1, False, "CONTENT", ("", "CONTENT", [])),  # 3992
    (DEEPSEEK_V3_2, True, THOUGHTS, ("I'm\nthinking", HELLO, [])),  # 4014
    (DEEPSEEK_V4, False, HELLO, ("", HELLO, [])),  # 4234
    (DEEPSEEK_V4, True, "Let me check the time\n\n" + V4_CALL,  # 4354: a call ends the thinking
     ("Let me check the time", "", [("get_time", {"city": "Tokyo"})])),
    (DEEPSEEK_V4, False, "\n\n" + dsml("tool_calls", invoke("special_function", ("arg1", "false", "1"))),  # 4371
     ("", "", CALL)),
    *[(fmt, "</think>" in before, before + dsml(block, *invokes),
       (before.split("</think>")[0] if "</think>" in before else "",
        before.split("</think>")[-1].strip(), calls))
      for fmt, block in ((DEEPSEEK_V3_2, "function_calls"), (DEEPSEEK_V4, "tool_calls"))
      for before, invokes, calls in DSML_CASES],
    *[(fmt, started, output, read_as) for fmt in (GLM_4_6, GLM_4_7, TAGGED) for started, output, read_as in GLM_CASES],
    (TAGGED, False, SPARK, SPARK_READ),  # Spark2.5 4561
    (KIMI_K2, False, HELLO, ("", HELLO, [])),  # 4973
    (KIMI_K2, False, KIMI_ONE, ("", "", CALL)),  # 4976, 5187, 5198
    (KIMI_K2, False, "<think>I'm thinking about this</think>" + KIMI_ONE, ("I'm thinking about this", "", CALL)),  # 4983
    (KIMI_K2, False, HELLO + KIMI_ONE, ("", HELLO, CALL)),  # 4992
    (KIMI_K2, False, kimi(("special_function:0", '{"arg1": 1}'), ("special_function_with_opt:1", '{"arg1": 1, "arg2": 2}')),
     ("", "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})])),  # 5001
    (KIMI_K2, False, "<think>I need to call two functions</think>" + f"<|tool_calls_section_begin|>{K_CALLS}"
     "<|tool_calls_section_end|>", K_READ),  # 5020
    (KIMI_K2, False, kimi(("python:0", '{"code": "def hello():\\n    print(\\"Hello, world!\\")\\n\\nhello()"}')),
     ("", "", [("python", {"code": 'def hello():\n    print("Hello, world!")\n\nhello()'})])),  # 5038
    (KIMI_K2, False, kimi(("empty_args:0", "{}")), ("", "", [("empty_args", {})])),  # 5047
    (KIMI_K2, False, kimi(("special_function:0", '{"arg1": 1}'), ("python:1", '{"code": "print(1)"}'),
                          ("html:2", '{"markup": "<p>test</p>"}')),  # 5063
     ("", "", [*CALL, ("python", {"code": "print(1)"}), ("html", {"markup": "<p>test</p>"})])),
    (KIMI_K2, False, f"<think>I need to call two functions<|tool_calls_section_begin|>{K_CALLS}<|tool_calls_section_end|>",
     K_READ),  # 5102: inside the thinking block
    (KIMI_K2, False, "<think>I need to call two functions" + K_CALLS.replace("<|tool_call_end|>", ""), K_READ),  # 5121
    (KIMI_K2, False, '<|tool_call_begin|>functions.execute_command:0<|tool_call_argument_begin|>{"command": "ls -lah", '
     '"cwd": "/home/user/development/exllamav3", "timeout": 10}',  # 5140
     ("", "", [("execute_command", {"command": "ls -lah", "cwd": "/home/user/development/exllamav3", "timeout": 10})])),
    (MINIMAX_M2, True, "\n</think>\n\n" + HELLO, ("", HELLO, [])),  # 5443
    (MINIMAX_M2, True, "I'm\nthinking\n</think>\n\n" + HELLO, ("I'm\nthinking", HELLO, [])),  # 5445
    (MINIMAX_M2, True, "Let's call a tool:\n</think>\n\n<minimax:tool_call>\n<invoke name=\"empty_args\">\n</invoke>\n"
     "</minimax:tool_call>", ("Let's call a tool:", "", [("empty_args", {})])),  # 5447
    (MINIMAX_M2, True, "\n</think>\n\n<minimax:tool_call>\n<invoke name=\"special_function\">\n<parameter "
     "name=\"arg1\">1</parameter>\n</invoke>\n</minimax:tool_call>", ("", "", CALL)),  # 5454
]


@pytest.mark.parametrize(("fmt", "started", "output", "expected"), CASES)
def test_llama_cpp_cases(fmt: ChatFormat, started: bool, output: str, expected: Any) -> None:
    assert read(fmt, started, output) == expected


def test_kimi_ids_are_kept() -> None:  # functions.NAME:INDEX is the call's id (4976, 5001)
    section = kimi(("special_function:0", '{"arg1": 1}'), ("special_function_with_opt:1", '{"arg1": 1}'))
    ids = [c.id for c in KIMI_K2.tools.parse(section, NAMES) or []]
    assert ids == ["functions.special_function:0", "functions.special_function_with_opt:1"]


def test_kimi_bare_calls_end_with_their_arguments() -> None:
    """Calls written without the section (after thinking, 5124) end at their object: the next one starts anew."""
    text = '<|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_begin|>x'
    assert KIMI_K2.tools.section_end(text) == text.index("<|tool_call_begin|>x")
    assert KIMI_K2.tools.section_end(text[:text.index("1}") + 2] + "<|tool_call_e") is None
    ended = text[:text.index("1}") + 2] + "<|tool_call_end|>Done"
    assert KIMI_K2.tools.section_end(ended) == len(ended) - len("Done")


def test_dsml_string_attribute_keeps_text() -> None:
    """string="true" keeps a value that would parse as JSON a string (the attribute says what it is)."""
    section = dsml("function_calls", invoke("magic_int", ("ref", "false", "7"), ("name", "true", "123")))
    assert [c.arguments for c in DEEPSEEK_V3_2.tools.parse(section, NAMES) or []] == ['{"ref": 7, "name": "123"}']


def test_cut_calls_keep_what_was_written() -> None:  # Kimi 5080; the others as their partial cases
    cut = KIMI_K2.tools.parse_cut(KIMI_ONE[:KIMI_ONE.index("1}")], NAMES)
    assert [(c.name, c.arguments, c.id) for c in cut] == [("special_function", '{"arg1":', "functions.special_function:0")]
    cut = DEEPSEEK_R1.tools.parse_cut(R1_CALL[:R1_CALL.index("1}")], NAMES)
    assert [(c.name, c.arguments) for c in cut] == [("special_function", '{"arg1":')]
    assert DEEPSEEK_R1.tools.parse_cut(R1_CALL[:R1_CALL.index("special") + 4], NAMES) == []
    cut = GLM_4_7.tools.parse_cut("<tool_call>magic_int<arg_key>ref</arg_key><arg_value>4</arg_value><arg_key>na", NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in cut] == [("magic_int", {"ref": 4})]
    assert GLM_4_7.tools.parse_cut("<tool_call>magic_i", NAMES) == []


def test_cut_in_thinking_keeps_the_reasoning() -> None:
    assert read(KIMI_K2, False, "<think>I was still thinking when") == ("I was still thinking when", "", [])
    assert read(DEEPSEEK_V4, True, "Still <｜DSML｜tool_ca") == ("Still <｜DSML｜tool_ca", "", [])


def test_unknown_tools_are_content() -> None:
    section = '<minimax:tool_call>\n<invoke name="nope">\n</invoke>\n</minimax:tool_call>'
    assert MINIMAX_M2.tools.parse(section, NAMES) is None
    assert KIMI_K2.tools.parse(kimi(("nope:0", "{}")), NAMES) is None
    assert DEEPSEEK_V3_1.tools.parse(V31.format("get_time", "not json"), NAMES) is None


# --- forced calls: the grammar writes the native syntax, and what it writes parses back ------------


def grammar(fmt: ChatFormat, names: list[str], max_calls: int) -> str:
    return forced_grammar(fmt, {n: SCHEMAS[n] for n in names}, max_calls)




R1_FORCED = ("<｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n```json\n{\"arg1\": 1}\n```<｜tool▁call▁end｜>")
FORCED = [
    (DEEPSEEK_R1, f"<｜tool▁calls▁begin｜>{R1_FORCED}<｜tool▁calls▁end｜>", CALL),
    (DEEPSEEK_R1, f"<｜tool▁calls▁begin｜>{R1_FORCED}\n{R1_FORCED}<｜tool▁calls▁end｜>", CALL * 2),
    (DEEPSEEK_V3_1, V31.format("special_function", '{"arg1": 1}'), CALL),
    (DEEPSEEK_V3_2, dsml("function_calls", invoke("magic_int", ("ref", "false", "42"), ("name", "true", "foo bar"))),
     [("magic_int", {"ref": 42, "name": "foo bar"})]),
    (DEEPSEEK_V4, dsml("tool_calls", invoke("get_time", ("city", "true", "Tokyo")),
                       invoke("special_function", ("arg1", "false", "1"))),
     [("get_time", {"city": "Tokyo"}), *CALL]),
    (KIMI_K2, kimi(("special_function:0", '{"arg1": 1}'), ("get_time:1", '{"city": "Oslo"}')),
     [*CALL, ("get_time", {"city": "Oslo"})]),
    (GLM_4_6, "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", CALL),
    (GLM_4_7, "<tool_call>magic_int<arg_key>ref</arg_key><arg_value>4</arg_value><arg_key>name</arg_key>"
              "<arg_value>x y</arg_value></tool_call><tool_call>empty_args</tool_call>",
     [("magic_int", {"ref": 4, "name": "x y"}), ("empty_args", {})]),
    (MINIMAX_M2, '<minimax:tool_call>\n<invoke name="special_function">\n<parameter name="arg1">1</parameter>\n'
                 '</invoke>\n</minimax:tool_call>', CALL),
]
FORCED_TOOLS = ["special_function", "get_time", "magic_int", "empty_args"]


@pytest.mark.parametrize(("fmt", "output", "calls"), FORCED, ids=[f[0].name for f in FORCED])
def test_forced_calls_are_native_and_parse_back(fmt: ChatFormat, output: str, calls: list[Any]) -> None:
    text = grammar(fmt, FORCED_TOOLS, 2)
    assert accepts(text, output)
    assert read(fmt, False, output) == ("", "", calls)


@pytest.mark.parametrize(("fmt", "output", "calls"), FORCED[:1] + FORCED[2:3] + FORCED[-1:])
def test_forced_call_refuses_another_tool_or_bad_arguments(fmt: ChatFormat, output: str, calls: list[Any]) -> None:
    text = grammar(fmt, ["special_function"], 1)
    assert accepts(text, output)
    assert not accepts(text, output.replace("special_function", "get_time"))
    assert not accepts(text, output.replace("1", '"one"'))


@pytest.mark.parametrize("fmt", sorted({f.name: f for f in DETECTED.values()}.values(), key=lambda f: f.name),
                         ids=lambda f: f.name)
def test_grammar_builds_for_every_schema(fmt: ChatFormat) -> None:
    grammar(fmt, sorted(SCHEMAS), 3)


# --- templates: history renders with the arguments as the format says; thinking opened by the prompt --

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Time in Tokyo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": {"city": "Tokyo"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_time", "content": "12:00"},
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "description": "time", "parameters": SCHEMAS["get_time"]}}]


def render(name: str, *, thinking: bool) -> str:
    messages = json.loads(json.dumps(CONVERSATION))
    chat = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    return chat.render(messages, tools=TOOLS, variables={"enable_thinking": thinking})


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_history_renders_the_call(name: str) -> None:
    prompt = render(name, thinking=False)
    assert "get_time" in prompt and "Tokyo" in prompt and "12:00" in prompt
    assert '\\"city' not in prompt  # the arguments were not written as a quoted JSON string


# Templates whose prompt opens the thinking block (with thinking on): the output starts inside it.
OPENS_THINKING = {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
                  "llama-cpp-deepseek-r1", "deepseek-ai-DeepSeek-V3.1", "deepseek-ai-DeepSeek-V3.2",
                  "deepseek-ai-DeepSeek-V4", "deepseek-ai-DeepSeek-V4-Flash-0731", "GLM-4.7-Flash", "MiniMax-M2",
                  "Spark2.5", "poolside-Laguna-S-2.1", "poolside-Laguna-XS-2.1"}


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_thinking_opened_by_the_prompt(name: str) -> None:
    messages = CONVERSATION[:2]
    chat = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    prompt = chat.render(messages, tools=TOOLS, variables={"enable_thinking": True})
    assert DETECTED[name].starts_in_reasoning(prompt) == (name in OPENS_THINKING)
    if name not in {"llama-cpp-deepseek-r1", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "MiniMax-M2"}:
        off = chat.render(messages, tools=TOOLS, variables={"enable_thinking": False})
        assert not DETECTED[name].starts_in_reasoning(off)
