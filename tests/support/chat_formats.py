"""What a family's model writes, and one request on any of the three APIs read back as (reasoning, content, calls):
shared by tests/test_chat_formats.py (the real model) and tests/test_chat_formats_inprocess.py (the fake)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from nomoat.core.reading import Reading
from nomoat.core.structured import Grammar
from nomoat.core.tool_calls import ToolStream
from nomoat.core.tools import ToolPlan
from nomoat.formats import ChatFormat, ToolRule

TEMPLATES = Path(__file__).resolve().parent.parent / "data" / "templates"
TOOL = {"type": "function", "function": {"name": "special_function", "description": "I'm special", "parameters": {
    "type": "object", "properties": {"arg1": {"type": "integer", "description": "The arg."}}, "required": ["arg1"]}}}
ARGS = {"arg1": 1}
THOUGHT = "I'm thinking"
DS_CALL = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
DS_END = "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
QWEN_XML = "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>"
HERMES = '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>'

# (model id, template file, the format detected, what the family's model writes: reasoning first where it thinks)
FAMILIES: list[tuple[str, str, str, str]] = [
    ("qwen3-coder", "Qwen3-Coder", "qwen3-coder", QWEN_XML),
    ("qwen35", "Qwen3.5-4B", "qwen3.5", f"{THOUGHT}\n</think>\n\n{QWEN_XML}"),  # the template opens <think>
    ("llama33", "meta-llama-Llama-3.3-70B-Instruct", "llama3", '{"name": "special_function", "parameters": {"arg1": 1}}'),
    ("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407", "mistral-nemo",
     '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "123456789"}]'),
    ("ministral", "mistralai-Ministral-3-14B-Reasoning-2512", "ministral-3",
     f'[THINK]{THOUGHT}[/THINK][TOOL_CALLS]special_function[ARGS]{{"arg1": 1}}'),
    ("gpt-oss", "openai-gpt-oss-120b", "harmony",
     f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>commentary "
     'to=functions.special_function <|constrain|>json<|message|>{"arg1": 1}'),
    # Its template renders no tools (they go in nomoat's system message) and opens <think> itself.
    ("deepseek-r1", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "deepseek-r1",
     f"{THOUGHT}\n</think>\n\n{DS_CALL}function<｜tool▁sep｜>special_function\n```json\n{{\"arg1\": 1}}\n```{DS_END}"),
    ("deepseek-v31", "deepseek-ai-DeepSeek-V3.1", "deepseek-v3.1",
     f'{THOUGHT}</think>{DS_CALL}special_function<｜tool▁sep｜>{{"arg1": 1}}{DS_END}'),
    ("command-r7b", "CohereForAI-c4ai-command-r7b-12-2024-tool_use", "command-r7b",
     f"<|START_THINKING|>{THOUGHT}<|END_THINKING|><|START_ACTION|>[\n    {{\"tool_call_id\": \"0\", "
     '"tool_name": "special_function", "parameters": {"arg1": 1}}\n]<|END_ACTION|>'),
    ("granite33", "ibm-granite-granite-3.3-2B-Instruct", "granite",
     '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}]'),
    ("kimi-k2", "moonshotai-Kimi-K2", "kimi-k2",
     "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0<|tool_call_argument_begin|>"
     '{"arg1": 1}<|tool_call_end|><|tool_calls_section_end|>'),
    ("glm46", "GLM-4.6", "glm-4.6",
     "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"),
    ("minimax-m2", "MiniMax-M2", "minimax-m2",
     f"{THOUGHT}</think>\n<minimax:tool_call>\n<invoke name=\"special_function\">\n"
     '<parameter name="arg1">1</parameter>\n</invoke>\n</minimax:tool_call>'),
    ("functionary31", "meetkai-functionary-medium-v3.1", "functionary-v3.1",
     '<function=special_function>{"arg1": 1}</function>'),
    ("apertus", "Apertus-8B-Instruct", "apertus",
     f'<|inner_prefix|>{THOUGHT}<|inner_suffix|><|tools_prefix|>[{{"special_function": {{"arg1": 1}}}}]<|tools_suffix|>'),
    ("nemotron-v2", "NVIDIA-Nemotron-Nano-v2", "nemotron-v2",
     f'{THOUGHT}</think><TOOLCALL>[{{"name": "special_function", "arguments": {{"arg1": 1}}}}]</TOOLCALL>'),
    ("seed-oss", "ByteDance-Seed-OSS", "seed-oss",
     f"<seed:think>{THOUGHT}</seed:think><seed:tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n"
     "</parameter>\n</function>\n</seed:tool_call>"),
]
# More families, read over the fake engine only: their syntaxes' real-model runs are the ones above or alike (Qwen3's
# and Phi 3.5's <tool_call> blocks are tests/test_tools.py's, forced and streamed on SmolLM2).
MORE_FAMILIES: list[tuple[str, str, str, str]] = [
    ("qwen3", "Qwen-Qwen3-0.6B", "qwen3", f"<think>\n{THOUGHT}\n</think>\n\n{HERMES}"),
    ("phi35", "microsoft-Phi-3.5-mini-instruct", "phi-3.5", HERMES),  # no tool syntax: nomoat's system message
    ("qwen25", "Qwen-Qwen2.5-7B-Instruct", "qwen2.5", HERMES),
    ("hermes3", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "hermes-2-pro", HERMES),
    ("qwq", "Qwen-QwQ-32B", "qwq", f"{THOUGHT}\n</think>\n\n{HERMES}"),
    ("smollm3", "HuggingFaceTB-SmolLM3-3B", "smollm3", f"<think>\n{THOUGHT}\n</think>\n{HERMES}"),
    ("nemotron3", "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "nemotron-3", f"{THOUGHT}\n</think>\n{QWEN_XML}"),
    ("llama31", "meta-llama-Llama-3.1-8B-Instruct", "llama3",
     '<|python_tag|>{"name": "special_function", "parameters": {"arg1": 1}}'),
    ("firefunction", "fireworks-ai-llama-3-firefunction-v2", "firefunction-v2",
     ' functools[{"name": "special_function", "arguments": {"arg1": 1}}]'),
    ("mistral-small", "Mistral-Small-3.2-24B-Instruct-2506", "mistral-small-3.2",
     '[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{"arg1": 1}'),
    ("devstral", "unsloth-mistral-Devstral-Small-2507", "devstral", '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}'),
    ("functionary32", "meetkai-functionary-medium-v3.2", "functionary-v3.2", 'special_function\n{"arg1": 1}'),
    ("granite4", "ibm-granite-granite-4.0", "granite-4", HERMES),
    ("command-r-plus", "CohereForAI-c4ai-command-r-plus-tool_use", "command-r-plus",
     'Action:\n```json\n[{"tool_name": "special_function", "parameters": {"arg1": 1}}]\n```'),
    ("glm47", "GLM-4.7-Flash", "glm-4.7",
     f"{THOUGHT}</think><tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value></tool_call>"),
    ("gemma4", "google-gemma-4-31B-it", "gemma4", "<|tool_call>call:special_function{arg1:1}<tool_call|>"),
    ("gemma2", "google-gemma-2-2b-it", "gemma", HERMES),
    ("lfm2", "LFM2-8B-A1B", "lfm2", "<|tool_call_start|>[special_function(arg1=1)]<|tool_call_end|>"),
    ("lfm25-thinking", "LFM2.5-8B-A1B", "lfm2-thinking",
     f"<think>{THOUGHT}</think><|tool_call_start|>[special_function(arg1=1)]<|tool_call_end|>"),
    ("minimax-m1", "MiniMax-M1", "minimax-m1",
     f'<think>\n{THOUGHT}\n</think>\n\n<tool_calls>\n{{"name": "special_function", "arguments": {{"arg1": 1}}}}\n'
     "</tool_calls>"),
    ("minimax-m3", "MiniMax-M3", "minimax-m3",
     f'<mm:think>{THOUGHT}</mm:think>]<]minimax[>[<tool_call>\n]<]minimax[>[<invoke name="special_function">'
     "]<]minimax[>[<arg1>1]<]minimax[>[</arg1>]<]minimax[>[</invoke>\n]<]minimax[>[</tool_call>"),
    ("kimi-k3", "Kimi-K3", "kimi-k3",  # the template opens the think section
     f"{THOUGHT}<|close|>think<|sep|><|open|>response<|sep|><|close|>response<|sep|><|open|>tools<|sep|>"
     '<|open|>call tool="special_function" index="1"<|sep|><|open|>argument key="arg1" type="number"<|sep|>1'
     "<|close|>argument<|sep|><|close|>call<|sep|><|close|>tools<|sep|><|close|>message<|sep|>"),
    ("apriel-16", "Apriel-1.6-15b-Thinker-fixed", "apriel",  # the template opens the reasoning
     f'{THOUGHT}\n[BEGIN FINAL RESPONSE]\n<tool_calls>[{{"name": "special_function", "arguments": {{"arg1": 1}}}}]'
     "</tool_calls>"),
    ("apriel-15", "unsloth-Apriel-1.5", "apriel",
     f"Here are my reasoning steps:\n{THOUGHT}\n[BEGIN FINAL RESPONSE]\n<tool_calls>[{{\"name\": \"special_function\", "
     '"arguments": {"arg1": 1}}]</tool_calls>'),
    ("gigachat3", "GigaChat3-10B-A1.8B", "gigachat-3",
     '<|message_sep|>\n\nfunction call<|role_sep|>\n{"name": "special_function", "arguments": {"arg1": 1}}'),
    ("gigachat31", "GigaChat3.1-10B-A1.8B", "gigachat-3.1",
     '<|function_call|>{"name": "special_function", "arguments": {"arg1": 1}}'),
    ("reka", "Reka-Edge", "qwq", f"{THOUGHT}\n</think>\n\n{HERMES}"),
    ("ling3", "inclusionai-ling-3.0-flash", "ling-3",
     f"{THOUGHT}\n</think>\n<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n</tool_call>"),
    ("minicpm5", "openbmb-MiniCPM5-1B", "minicpm5",
     f'{THOUGHT}\n</think>\n\n<function name="special_function"><param name="arg1">1</param></function>'),
    ("muse", "muse-glimmer", "muse-glimmer",
     f" to=self<|message|>{THOUGHT}<|eom|><|start|>assistant to=special_function<|message|><atem:function_calls>\n"
     '<atem:invoke name="special_function">\n<atem:parameter name="arg1">1</atem:parameter>\n</atem:invoke>\n'
     "</atem:function_calls>"),
    ("hy3", "tencent-Hy3", "hy3",
     f"<think:opensource>{THOUGHT}</think:opensource><tool_calls:opensource>\n<tool_call:opensource>special_function"
     "<tool_sep:opensource>\n<arg_key:opensource>arg1</arg_key:opensource>\n<arg_value:opensource>1"
     "</arg_value:opensource>\n</tool_call:opensource>\n</tool_calls:opensource>"),
    ("solar", "upstage-Solar-Open-100B", "solar-open",
     f"<|think|>{THOUGHT}<|end|><|begin|>assistant<|tool_calls|><|tool_call:begin|>a1b2c3d4e5"
     '<|tool_call:name|>special_function<|tool_call:args|>{"arg1": 1}<|tool_call:end|>'),
]
THINKS = {"lfm25-thinking", "minimax-m1", "minimax-m3", "kimi-k3", "apriel-16", "apriel-15", "reka", "ling3",
          "minicpm5", "muse", "hy3", "solar", "qwq", "smollm3", "nemotron3", "glm47", "qwen3", "qwen35", "ministral",
          "gpt-oss", "command-r7b", "minimax-m2", "apertus", "deepseek-r1", "deepseek-v31", "seed-oss", "nemotron-v2"}
APIS = ("chat", "responses", "anthropic")


Read = tuple[str | None, str, list[tuple[str, dict[str, Any]]]]  # reasoning, content, calls (name, arguments)


def _sse(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.read()
    return [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ") and ln != "data: [DONE]"]


def ask(c: Any, api: str, model: str, *, stream: bool, forced: bool = False, grammar: str | None = None,
        say: str = "Call special_function with arg1 = 1.") -> Read:
    """One request on `api` ("chat", "responses" or "anthropic") through the client `c` (httpx's, or the in-process
    app's), offering TOOL (`forced`: a call to it required), read back as (reasoning, content, calls)."""
    fields: dict[str, Any] = {"model": model, "max_tokens": 400, "temperature": 0, "stream": stream,
                              **({"grammar": grammar} if grammar is not None else {})}
    messages = [{"role": "user", "content": say}]
    return {"chat": _chat, "responses": _responses, "anthropic": _anthropic}[api](c, fields, messages, forced)


def _chat(c: Any, fields: dict[str, Any], messages: list[Any], forced: bool) -> Read:
    body = {**fields, "messages": messages, "tools": [TOOL], **({"tool_choice": "required"} if forced else {})}
    if not fields["stream"]:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        m = r.json()["choices"][0]["message"]
        return (m.get("reasoning_content"), m["content"] or "",
                [(t["function"]["name"], json.loads(t["function"]["arguments"])) for t in m.get("tool_calls") or []])
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        events = _sse(r)
    reasoning, content, calls = "", "", {}
    for e in events:
        for choice in e["choices"]:
            d = choice["delta"]
            reasoning += d.get("reasoning_content") or ""
            content += d.get("content") or ""
            for t in d.get("tool_calls") or []:
                call = calls.setdefault(t["index"], ["", ""])
                call[0] += t["function"].get("name") or ""
                call[1] += t["function"].get("arguments") or ""
    return reasoning or None, content, [(n, json.loads(a)) for n, a in calls.values()]


def _responses(c: Any, fields: dict[str, Any], messages: list[Any], forced: bool) -> Read:
    fn = TOOL["function"]
    body = {**{k: v for k, v in fields.items() if k != "max_tokens"}, "max_output_tokens": fields["max_tokens"],
            "input": messages, "tools": [{"type": "function", "name": fn["name"], "parameters": fn["parameters"]}],
            **({"tool_choice": "required"} if forced else {})}
    if fields["stream"]:
        with c.stream("POST", "/v1/responses", json=body) as r:
            done = [e for e in _sse(r) if e["type"] == "response.completed"]
        output = done[0]["response"]["output"]
    else:
        r = c.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        output = r.json()["output"]
    reasoning = "".join(p["text"] for i in output if i["type"] == "reasoning" for p in i.get("content") or [])
    content = "".join(p["text"] for i in output if i["type"] == "message" for p in i["content"])
    return (reasoning or None, content,
            [(i["name"], json.loads(i["arguments"])) for i in output if i["type"] == "function_call"])


def _anthropic(c: Any, fields: dict[str, Any], messages: list[Any], forced: bool) -> Read:
    fn = TOOL["function"]
    body = {**{k: v for k, v in fields.items() if k != "grammar"}, "messages": messages,
            "tools": [{"name": fn["name"], "input_schema": fn["parameters"]}],
            **({"tool_choice": {"type": "any"}} if forced else {})}
    if fields["stream"]:
        with c.stream("POST", "/v1/messages", json=body) as r:
            assert r.status_code == 200, r.read()
            events = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
        blocks: dict[int, dict[str, Any]] = {}
        for e in events:
            if e["type"] == "content_block_start":
                blocks[e["index"]] = {**e["content_block"], "partial": ""}
            elif e["type"] == "content_block_delta":
                d, b = e["delta"], blocks[e["index"]]
                b["partial"] += d.get("partial_json", "")
                b["text"] = b.get("text", "") + d.get("text", "")
                b["thinking"] = b.get("thinking", "") + d.get("thinking", "")
        content_blocks = [{**b, "input": json.loads(b["partial"] or "{}")} if b["type"] == "tool_use" else b
                          for _, b in sorted(blocks.items())]
    else:
        r = c.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        content_blocks = r.json()["content"]
    reasoning = "".join(b.get("thinking", "") for b in content_blocks if b["type"] == "thinking")
    content = "".join(b.get("text", "") for b in content_blocks if b["type"] == "text")
    return reasoning or None, content, [(b["name"], b["input"]) for b in content_blocks if b["type"] == "tool_use"]


def forced_grammar(fmt: ChatFormat, schemas: dict[str, Any], max_calls: int) -> str:
    """The grammar text a forced call to these tools (name: parameters) gets in `fmt`'s syntax, as core/tools.py
    builds it (g.text raises if it would keep many parses alive)."""
    g = Grammar("tools")
    rules = []
    for i, (name, schema) in enumerate(schemas.items()):
        doc = f"tool{i}"
        args = g.schema_rule(schema, doc_id=doc, path="", param=f"tools[{i}]")
        rules.append(ToolRule(name, args, schema,
                              lambda s, k, d=doc: g.property_rule(s, doc_id=d, path=f"/properties/{k}")))
    text: str = g.text(fmt.tools.calls_rule(g, rules, max_calls))
    return text


def read_both(fmt: ChatFormat, started: bool | None, output: str, plan: ToolPlan,
              strip: bool = False) -> tuple[str, str, list[Any]]:
    """Reasoning, content and calls as the generation core reads them (core/reading.py's Reading): the output
    whole, and streamed a character at a time, which must agree (`strip`: the whole content stripped too)."""
    reading = Reading(started, fmt, fmt.tools)
    reasoning, rest = reading.split(output)
    content, calls = reading.parse(rest, plan)
    whole = (reasoning or "", content.strip() if strip else content, [(c.name, json.loads(c.arguments)) for c in calls])
    splitter, stream = reading.splitter(), ToolStream(plan, fmt.tools)
    streamed, deltas = "", []
    for piece in [*(splitter.feed(ch) for ch in output), splitter.finish()]:
        for kind, text in piece:
            if kind == "reasoning":
                streamed += text
            else:
                deltas += stream.feed(text)
    deltas += stream.finish()
    text = "".join(d.get("content", "") for d in deltas).strip()
    assert (streamed, text, [(c.name, json.loads(c.arguments)) for c in stream.calls]) == whole
    return whole
