"""Llama 3.x, FireFunction v2, Mistral (Nemo, Small 3.2, Devstral, Ministral 3), Functionary v3.1 / v3.2,
Phi 3.5, Gemma 2/3 and Gemma 4: detection, parsing (whole and cut) and forced calls.

The parse cases are llama.cpp's, from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp/tests/test-chat.cpp:
Ministral-3-14B-Reasoning 2601-2680, Gemma 2 2975-2987 and 3361, Gemma 4 2992-3180, Mistral Nemo 5913-5925,
Functionary v3.1 5931-5945, v3.2 5948-5964, FireFunction v2 5967-5984, Mistral Small 3.2 6250-6279,
Devstral 6281-6295, Llama 3.1 / 3.2 / 3.3 6297-6350. Each output is read as the generation core reads it:
the format's splitter (core/reasoning.py) first, then the sections of calls in the content, by the
format's ToolSyntax (`read` below). That test-chat.cpp has no Llama 3.x call case; the ones here are written
from the template's own words (`{"name": ..., "parameters": ...}`, `<|python_tag|>`).

Left out: the continuation cases (continue_final_message: a prompt feature, not a parse); reasoning_format
`none` (Ministral 2606, Gemma 4 3012: the core's option, not the format's); json_schema answers in a ```json
fence (Ministral 2646, Llama 3.1 6302-6315: response_format handling). expect_reconstruction is checked for the
call cases only (test_history_renders_what_the_model_wrote).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.chat_formats import forced_grammar

from nomoat.core.grammar_stacks import accepts
from nomoat.core.reasoning import split_reasoning
from nomoat.engine.chat_template import ChatTemplate
from nomoat.formats import ChatFormat, detect
from nomoat.formats.base import ToolCall, as_call
from nomoat.formats.functionary import FUNCTIONARY_V31, FUNCTIONARY_V32
from nomoat.formats.llama3 import FIREFUNCTION, LLAMA3
from nomoat.formats.mistral import DEVSTRAL, MINISTRAL, MISTRAL_NEMO, MISTRAL_SMALL, history_call_id
from nomoat.formats.plain import GEMMA, GEMMA4, PHI3, gemma4_arguments

pytestmark = pytest.mark.fast

TEMPLATES = Path(__file__).parent / "data" / "templates"
STR, INT = {"type": "string"}, {"type": "integer"}
SCHEMAS: dict[str, dict[str, Any]] = {
    "special_function": {"type": "object", "properties": {"arg1": INT}, "required": ["arg1"]},
    "special_function_with_opt": {"type": "object", "properties": {"arg1": INT, "arg2": INT}, "required": ["arg1"]},
    "get_time": {"type": "object", "properties": {"city": STR}, "required": ["city"]},
    "get_weather": {"type": "object", "properties": {"city": STR}, "required": ["city"]},
    "python": {"type": "object", "properties": {"code": STR}, "required": ["code"]},
    "brave_search": {"type": "object", "properties": {"query": STR}, "required": ["query"]},
    "amount": {"type": "object", "properties": {"orig": {"type": "number"}}, "required": ["orig"]},
    "toggle": {"type": "object", "properties": {"enabled": {"type": "boolean"}}, "required": ["enabled"]},
    "set_nullable": {"type": "object", "properties": {"value": {"type": ["string", "null"]}}, "required": ["value"]},
    "todo_list": {"type": "object", "properties": {"todos": {"type": "array", "items": STR}}, "required": ["todos"]},
    "set_config": {"type": "object", "properties": {"config": {"type": "object"}}, "required": ["config"]},
    "empty_args": {"type": "object", "properties": {}},
}
NAMES = set(SCHEMAS)
CALL = [("special_function", {"arg1": 1})]
HELLO = "Hello, world!\nWhat's up?"

DETECTED = {
    "meta-llama-Llama-3.1-8B-Instruct": LLAMA3, "meta-llama-Llama-3.2-3B-Instruct": LLAMA3,
    "meta-llama-Llama-3.3-70B-Instruct": LLAMA3, "fireworks-ai-llama-3-firefunction-v2": FIREFUNCTION,
    "mistralai-Mistral-Nemo-Instruct-2407": MISTRAL_NEMO, "Mistral-Small-3.2-24B-Instruct-2506": MISTRAL_SMALL,
    "unsloth-mistral-Devstral-Small-2507": DEVSTRAL, "mistralai-Ministral-3-14B-Reasoning-2512": MINISTRAL,
    "meetkai-functionary-medium-v3.1": FUNCTIONARY_V31, "meetkai-functionary-medium-v3.2": FUNCTIONARY_V32,
    "microsoft-Phi-3.5-mini-instruct": PHI3, "google-gemma-2-2b-it": GEMMA,
    "google-gemma-4-31B-it": GEMMA4, "google-gemma-4-31B-it-interleaved": GEMMA4,
}
# Gemma 3's template (not in the corpus; the start of google/gemma-3-*-it's): the same turns as Gemma 2's.
GEMMA3_HEAD = ("{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = "
               "messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' }}")


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


@pytest.mark.parametrize("name", sorted(DETECTED))
def test_detected_from_its_template(name: str) -> None:
    assert detect(template(name)).name == DETECTED[name].name


def test_gemma3_is_gemma() -> None:
    assert detect(GEMMA3_HEAD).name == GEMMA.name


Read = tuple[str | None, str, list[tuple[str, dict[str, Any]]]]


def read(fmt: ChatFormat, output: str, *, cut: bool = False) -> Read:
    """Reasoning, content and calls, as the generation core reads an output: splitter, then sections."""
    reasoning, text = split_reasoning(output, False, fmt)
    content: list[str] = []
    calls = [(c.name, json.loads(c.arguments)) for c in sections(fmt, text, cut=cut, content=content)]
    return reasoning, "".join(content).strip(), calls


def sections(fmt: ChatFormat, text: str, *, cut: bool = False, content: list[str]) -> list[ToolCall]:
    """The calls in `text` (content after the splitter), by the ToolSyntax contract; the rest into `content`."""
    syntax = fmt.tools
    if syntax.bare_json and text.strip()[:1] in ("{", "["):  # the whole output is the call (Llama 3)
        obj = json.loads(text)
        return [c for c in (as_call(o, NAMES) for o in (obj if isinstance(obj, list) else [obj])) if c]
    calls: list[ToolCall] = []
    while text:
        starts = [i for i in (text.find(s) for s in syntax.starts) if i >= 0]
        if not starts:
            content.append(text)
            break
        content.append(text[:min(starts)])
        text = text[min(starts):]
        end = syntax.section_end(text)
        section, text = (text, "") if end is None else (text[:end], text[end:])
        found = syntax.parse_cut(section, NAMES) if cut and end is None else syntax.parse(section, NAMES)
        if found:
            calls += found
        else:
            content.append(section)
    return calls


# --- content and reasoning --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [LLAMA3, FIREFUNCTION, MISTRAL_NEMO, MISTRAL_SMALL, DEVSTRAL, MINISTRAL,
                                 FUNCTIONARY_V31, PHI3, GEMMA, GEMMA4], ids=lambda f: f.name)
def test_plain_answers_are_content(fmt: ChatFormat) -> None:  # every family's first case
    assert read(fmt, HELLO) == (None, HELLO, [])


@pytest.mark.parametrize(("fmt", "output", "expected"), [
    (MINISTRAL, f"[THINK]I'm\nthinking[/THINK]{HELLO}", ("I'm\nthinking", HELLO, [])),  # 2611
    (MINISTRAL, '[THINK]I\'m\nthinking[/THINK][TOOL_CALLS]special_function[ARGS]{"arg1":1}',  # 2626
     ("I'm\nthinking", "", CALL)),
    (MINISTRAL, '[THINK]Let me think about [TOOL_CALLS]special_function[ARGS]{"arg1":1} and more[/THINK]'  # 2660
                '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
     ('Let me think about [TOOL_CALLS]special_function[ARGS]{"arg1":1} and more', "", CALL)),
    (GEMMA4, f"<|channel>thought\nI'm\nthinking<channel|>{HELLO}", ("I'm\nthinking", HELLO, [])),  # 2998
    (GEMMA4, f"<|channel>thought<channel|>{HELLO}", ("", HELLO, [])),  # 3005
    (GEMMA4, '<|channel>thought\nI\'m\nthinking<channel|><|tool_call>call:get_time{city:<|"|>Paris<|"|>}<tool_call|>',
     ("I'm\nthinking", "", [("get_time", {"city": "Paris"})])),  # 3051
    (GEMMA4, f"<|channel>thought\n<channel|>{HELLO}<channel|>", ("", HELLO, [])),  # 3146
    (GEMMA4, f"<|channel>thought\n<channel|>{HELLO}<|channel>thought\n<channel|>", ("", HELLO, [])),  # 3151
    (GEMMA4, f"<|channel>thought\n<channel|>{HELLO}<|channel>thought\n<channel|><channel|>", ("", HELLO, [])),  # 3156
    (GEMMA4, f"<|channel><|channel>thought\n<channel|>{HELLO}", (None, HELLO, [])),  # 3161: stray markers dropped
])
def test_reasoning(fmt: ChatFormat, output: str, expected: Read) -> None:
    assert read(fmt, output) == expected


# --- calls, whole -----------------------------------------------------------------------------------

CASES: list[tuple[ChatFormat, str, str, list[tuple[str, dict[str, Any]]]]] = [
    (MINISTRAL, '[TOOL_CALLS]special_function[ARGS]{"arg1":1}', "", CALL),  # 2618
    (MINISTRAL, '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}'  # 2634
                '[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1, "arg2": 2}',
     "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    (MISTRAL_NEMO, '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]',
     "", CALL),  # 5917
    (MISTRAL_SMALL, '[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{"arg1": 1}', "", CALL),  # 6255
    (MISTRAL_SMALL, '[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{"arg1": 1}'  # 6261
                    '[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]{"arg1": 1, "arg2": 2}',
     "", [*CALL, ("special_function_with_opt", {"arg1": 1, "arg2": 2})]),
    (DEVSTRAL, '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', "", CALL),  # 6285
    (DEVSTRAL, HELLO + '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', HELLO, CALL),  # 6290
    (FUNCTIONARY_V31, '<function=special_function>{"arg1": 1}</function>', "", CALL),  # 5934
    (FUNCTIONARY_V31, "<|python_tag|>print('hey')", "", [("python", {"code": "print('hey')"})]),
    (FUNCTIONARY_V32, 'special_function\n{"arg1": 1}', "", CALL),  # 5952
    (FUNCTIONARY_V32, 'all\nLet me look.\n>>>special_function\n{"arg1": 1}>>>get_time\n{"city": "Oslo"}',
     "Let me look.", [*CALL, ("get_time", {"city": "Oslo"})]),
    (FIREFUNCTION, ' functools[{"name": "special_function", "arguments": {"arg1": 1}}]', "", CALL),  # 5971
    (LLAMA3, '{"name": "special_function", "parameters": {"arg1": 1}}', "", CALL),
    (LLAMA3, '<|python_tag|>{"name": "special_function", "parameters": {"arg1": 1}}', "", CALL),
    (LLAMA3, '<|python_tag|>{"type": "function", "name": "special_function", "arguments": {"arg1": 1}}', "", CALL),
    (LLAMA3, '<|python_tag|>brave_search.call(query="weather in \\"Paris\\"")', "",
     [("brave_search", {"query": 'weather in "Paris"'})]),
    (LLAMA3, "<|python_tag|>import math\nprint(math.pi)", "", [("python", {"code": "import math\nprint(math.pi)"})]),
]
G4 = '<|tool_call>call:{}<tool_call|>'
GEMMA4_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ('get_time{city:<|"|>London<|"|>}', "get_time", {"city": "London"}),  # 3019
    ('get_time{city:<|"|>San Francisco<|"|>}', "get_time", {"city": "San Francisco"}),  # 3026
    ("empty_args{}", "empty_args", {}),  # 3033
    ("special_function{arg1:42}", "special_function", {"arg1": 42}),  # 3073
    ("special_function{arg1:-7}", "special_function", {"arg1": -7}),  # 3080
    ("amount{orig:3.14}", "amount", {"orig": 3.14}),  # 3087
    ("toggle{enabled:true}", "toggle", {"enabled": True}),  # 3094
    ("toggle{enabled:false}", "toggle", {"enabled": False}),  # 3101
    ("set_nullable{value:null}", "set_nullable", {"value": None}),  # 3108
    ('todo_list{todos:[<|"|>buy milk<|"|>,<|"|>walk dog<|"|>]}', "todo_list", {"todos": ["buy milk", "walk dog"]}),
    ('set_config{config:{theme:<|"|>dark<|"|>,count:3}}', "set_config", {"config": {"theme": "dark", "count": 3}}),
    ("todo_list{todos:[]}", "todo_list", {"todos": []}),  # 3129
    ("set_config{config:{}}", "set_config", {"config": {}}),  # 3136
    ("amount{orig:1.5e10}", "amount", {"orig": 1.5e10}),  # 3143
]
CASES += [(GEMMA4, G4.format(call), "", [(name, args)]) for call, name, args in GEMMA4_CASES]
CASES += [
    (GEMMA4, HELLO + G4.format('get_time{city:<|"|>Paris<|"|>}'), HELLO, [("get_time", {"city": "Paris"})]),  # 3040
    (GEMMA4, G4.format('get_time{city:<|"|>London<|"|>}') + G4.format('get_weather{city:<|"|>Paris<|"|>}'),  # 3061
     "", [("get_time", {"city": "London"}), ("get_weather", {"city": "Paris"})]),
]


@pytest.mark.parametrize(("fmt", "output", "content", "calls"), CASES, ids=lambda v: getattr(v, "name", None))
def test_calls(fmt: ChatFormat, output: str, content: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert read(fmt, output)[1:] == (content, calls)


def test_functionary_v32_text_is_to_all() -> None:  # 5951: the prompt wrote ">>>", the model "all\n"
    assert read(FUNCTIONARY_V32, "all\n" + HELLO) == (None, HELLO, [])
    assert read(FUNCTIONARY_V32, "all\nHi>>>all\nthere") == (None, "Hithere", [])


def test_functionary_v32_splitter_streams() -> None:
    s = FUNCTIONARY_V32.splitter(False)
    pieces = [p for chunk in ["al", "l", "\nHi >", ">>a", "ll\nyou"] for p in s.feed(chunk)] + s.finish()
    assert "".join(t for _, t in pieces) == "Hi you"
    s = FUNCTIONARY_V32.splitter(False)
    pieces = [p for chunk in ["special_", "function\n{", '"arg1": 1}'] for p in s.feed(chunk)] + s.finish()
    assert "".join(t for _, t in pieces) == '>>>special_function\n{"arg1": 1}'


def test_call_ids() -> None:
    """Mistral keeps the id the model wrote; one it did not write gets 9 alphanumerics, as its template needs."""
    nemo = MISTRAL_NEMO.tools.parse(CASES[2][1], NAMES)
    assert nemo is not None and nemo[0].id == "123456789"
    small = MISTRAL_SMALL.tools.parse('[TOOL_CALLS]special_function[CALL_ID]000000002[ARGS]{"arg1": 1}', NAMES)
    assert small is not None and small[0].id == "000000002"
    dev = DEVSTRAL.tools.parse('[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', NAMES)
    assert dev is not None and len(dev[0].id) == 9 and dev[0].id.isalnum()
    assert history_call_id("call_abc") == history_call_id("call_abc") != "call_abc"
    assert len(history_call_id("call_abc")) == 9 and history_call_id("a1b2c3d4e") == "a1b2c3d4e"


@pytest.mark.parametrize(("fmt", "section"), [
    (MISTRAL_NEMO, '[TOOL_CALLS][{"name": "nope", "arguments": {}}]'),
    (DEVSTRAL, "[TOOL_CALLS]nope[ARGS]{}"),
    (DEVSTRAL, "[TOOL_CALLS]special_function[ARGS][1]"),
    (FUNCTIONARY_V31, "<function=nope>{}</function>"),
    (FUNCTIONARY_V32, ">>>nope\n{}"),
    (FIREFUNCTION, 'functools[{"name": "nope", "arguments": {}}]'),
    (LLAMA3, '<|python_tag|>{"name": "nope", "parameters": {}}'),
    (GEMMA4, G4.format("nope{}")),
    (GEMMA4, G4.format("get_time{city:<|\"|>unclosed}")),
])
def test_not_calls_stay_content(fmt: ChatFormat, section: str) -> None:
    assert fmt.tools.parse(section, NAMES) is None


def test_gemma4_notation() -> None:
    assert gemma4_arguments('{<|"|>quoted key<|"|>:1, list:[true,null,-2.5]}') == \
        {"quoted key": 1, "list": [True, None, -2.5]}
    assert gemma4_arguments("{a:1}{") is None
    assert gemma4_arguments("{a:}") is None


# --- calls cut by max_tokens --------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "output", "calls"), [
    (MINISTRAL, '[TOOL_CALLS]special_function[ARGS]{"arg1": ', [("special_function", '{"arg1":')]),
    (MISTRAL_SMALL, "[TOOL_CALLS]special_function[CALL_ID]12345", []),
    (MISTRAL_NEMO, '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}, '
                   '{"name": "get_time", "arguments": {"ci', [("special_function", '{"arg1": 1}'),
                                                               ("get_time", '{"ci')]),
    (FUNCTIONARY_V31, '<function=get_time>{"city": "Par', [("get_time", '{"city": "Par')]),
    (FUNCTIONARY_V32, 'get_time\n{"city"', [("get_time", '{"city"')]),
    (FIREFUNCTION, ' functools[{"name": "get_time", "arguments": {"city": "X"}}, {"name": "get_weather", ',
     [("get_time", '{"city": "X"}')]),
    (LLAMA3, '<|python_tag|>{"name": "get_time", "parameters": {"city": "O', [("get_time", '{"city": "O')]),
    (GEMMA4, '<|tool_call>call:get_time{city:<|"|>Par', [("get_time", '{city:<|"|>Par')]),
    (GEMMA4, "<|tool_call>call:get_ti", []),
])
def test_cut_calls(fmt: ChatFormat, output: str, calls: list[tuple[str, str]]) -> None:
    _, text = split_reasoning(output, False, fmt)
    found = sections(fmt, text, cut=True, content=[])
    assert [(c.name, c.arguments) for c in found] == calls


# --- the history: the template renders a parsed call back to what the model wrote ------------------------

@pytest.mark.parametrize(("name", "output"), [
    ("mistralai-Mistral-Nemo-Instruct-2407", CASES[2][1]),  # 5917's reconstruction
    ("Mistral-Small-3.2-24B-Instruct-2506", CASES[3][1]),
    ("unsloth-mistral-Devstral-Small-2507", CASES[5][1]),
    ("mistralai-Ministral-3-14B-Reasoning-2512", CASES[1][1].replace('"arg1":1', '"arg1": 1')),
    ("meetkai-functionary-medium-v3.1", CASES[7][1]),
    ("meetkai-functionary-medium-v3.2", ">>>" + CASES[9][1]),
    ("fireworks-ai-llama-3-firefunction-v2", CASES[11][1]),
    ("meta-llama-Llama-3.1-8B-Instruct", CASES[12][1]),
    ("google-gemma-4-31B-it", G4.format('get_time{city:<|"|>London<|"|>}')),
])
def test_history_renders_what_the_model_wrote(name: str, output: str) -> None:
    fmt = detect(template(name))
    _, text = split_reasoning(output.removeprefix(">>>"), False, fmt)
    calls = sections(fmt, text, content=[])
    assert calls
    tmpl = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    history = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
               for c in calls]  # OpenAI's JSON string: the renderer gives the template what it reads
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": history}]
    tools = [{"type": "function", "function": {"name": c.name, "description": "", "parameters": SCHEMAS[c.name]}}
             for c in calls]
    assert output in tmpl.render(messages, tools=tools, add_generation_prompt=False)


# --- forced calls: the grammar writes the native syntax, and what it writes parses back ------------


def grammar(fmt: ChatFormat, names: list[str], max_calls: int) -> str:
    return forced_grammar(fmt, {n: SCHEMAS[n] for n in names}, max_calls)




ALL = ["special_function", "special_function_with_opt", "get_time", "set_config", "todo_list", "toggle"]
FORCED: list[tuple[ChatFormat, str, list[tuple[str, dict[str, Any]]]]] = [
    (LLAMA3, '{"name": "special_function", "parameters": {"arg1": 1}}', CALL),
    (FIREFUNCTION, ' functools[{"name": "special_function", "arguments": {"arg1": 1}}, '
                   '{"name": "get_time", "arguments": {"city": "Oslo"}}]', [*CALL, ("get_time", {"city": "Oslo"})]),
    (MISTRAL_NEMO, '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "a1b2c3d4e"}]', CALL),
    (MISTRAL_SMALL, '[TOOL_CALLS]special_function[CALL_ID]a1b2c3d4e[ARGS]{"arg1": 1}'
                    '[TOOL_CALLS]get_time[CALL_ID]000000002[ARGS]{"city": "Oslo"}',
     [*CALL, ("get_time", {"city": "Oslo"})]),
    (MINISTRAL, '[TOOL_CALLS]special_function_with_opt[ARGS]{"arg1": 1}', [("special_function_with_opt", {"arg1": 1})]),
    (DEVSTRAL, '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}', CALL),
    (FUNCTIONARY_V31, '<function=special_function>{"arg1": 1}</function><function=get_time>{"city": "Oslo"}</function>',
     [*CALL, ("get_time", {"city": "Oslo"})]),
    (FUNCTIONARY_V32, 'special_function\n{"arg1": 1}>>>get_time\n{"city": "Oslo"}', [*CALL, ("get_time", {"city": "Oslo"})]),
    (GEMMA4, G4.format('special_function_with_opt{arg1:1,arg2:-2}') + G4.format('get_time{city:<|"|>Oslo<|"|>}'),
     [("special_function_with_opt", {"arg1": 1, "arg2": -2}), ("get_time", {"city": "Oslo"})]),
    (GEMMA4, G4.format('set_config{config:{theme:<|"|>dark<|"|>,n:[1,{a:true}]}}') +
     G4.format('todo_list{todos:[<|"|>milk<|"|>]}') + G4.format("toggle{enabled:false}"),
     [("set_config", {"config": {"theme": "dark", "n": [1, {"a": True}]}}), ("todo_list", {"todos": ["milk"]}),
      ("toggle", {"enabled": False})]),
]


@pytest.mark.parametrize(("fmt", "output", "calls"), FORCED, ids=lambda v: getattr(v, "name", None))
def test_forced_calls_parse_back(fmt: ChatFormat, output: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    text = grammar(fmt, ALL, 3)
    assert accepts(text, output)
    assert read(fmt, output)[1:] == ("", calls)


# One forced call to special_function in each syntax.
ONE = {
    LLAMA3: '{"name": "special_function", "parameters": {"arg1": 1}}',
    FIREFUNCTION: ' functools[{"name": "special_function", "arguments": {"arg1": 1}}]',
    MISTRAL_NEMO: '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "a1b2c3d4e"}]',
    MISTRAL_SMALL: '[TOOL_CALLS]special_function[CALL_ID]a1b2c3d4e[ARGS]{"arg1": 1}',
    MINISTRAL: '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
    DEVSTRAL: '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}',
    FUNCTIONARY_V31: '<function=special_function>{"arg1": 1}</function>',
    FUNCTIONARY_V32: 'special_function\n{"arg1": 1}',
    GEMMA4: G4.format("special_function{arg1:1}"),
}


@pytest.mark.parametrize("fmt", list(ONE), ids=lambda f: f.name)
def test_forced_grammar_counts_calls(fmt: ChatFormat) -> None:
    """max_calls bounds the calls (Llama 3 writes one whatever it is: its template takes no more)."""
    one = ONE[fmt]
    if fmt in (FIREFUNCTION, MISTRAL_NEMO):  # one list holds every call
        two = one[:-1] + ", " + one[one.index("{"):]
    else:
        two = one + (">>>" if fmt is FUNCTIONARY_V32 else "") + one
    assert accepts(grammar(fmt, ["special_function"], 1), one)
    assert not accepts(grammar(fmt, ["special_function"], 1), two)
    assert accepts(grammar(fmt, ["special_function"], 2), two) is (fmt is not LLAMA3)
    assert not accepts(grammar(fmt, ["get_time"], 2), one)
    if fmt is not LLAMA3:
        assert read(fmt, two)[2] == CALL * 2


def test_gemma4_forced_optional_members() -> None:
    text = grammar(GEMMA4, ["special_function_with_opt", "empty_args"], 1)
    assert accepts(text, G4.format("special_function_with_opt{arg1:1}"))
    assert accepts(text, G4.format("empty_args{}"))
    assert not accepts(text, G4.format("special_function_with_opt{arg2:1}"))  # arg1 is required
    assert not accepts(text, G4.format("special_function_with_opt{arg2:1,arg1:1}"))  # sorted, as the template
