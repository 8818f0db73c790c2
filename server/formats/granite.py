"""IBM Granite: 3.x writes `<|tool_call|>` and a JSON list of calls, 4.x Hermes' <tool_call> blocks.

Granite 3.3 thinks when its template's `thinking` variable is set (chat_template_kwargs; the template
ignores it when tools are given), then wraps the answer:

    <think>The user wants the weather.</think><response>It is sunny.</response>
    <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]

Granite 4.0 / 4.1 describe their tools in the system message and call as Hermes does, without thinking.
"""

from __future__ import annotations

from .base import ChatFormat, Reasoning
from .command_r import JsonListSyntax
from .hermes import CLOSE, OPEN, HermesSyntax

TOOL_CALL = "<|tool_call|>"
_ROLE = "<|start_of_role|>"

GRANITE_3 = ChatFormat(
    "granite",
    JsonListSyntax("granite", TOOL_CALL),
    Reasoning("<think>", "</think>"),
    wrappers=("<response>", "</response>"),
    preserved=(TOOL_CALL, "<think>", "</think>", "<response>", "</response>"),
    note="Granite 3.x: <|tool_call|>[{name, arguments}] calls, <think> reasoning then <response> answers",
)

GRANITE_4 = ChatFormat(
    "granite-4",
    HermesSyntax(),
    None,
    preserved=(OPEN, CLOSE),
    note="Granite 4.x: Hermes' <tool_call> blocks, tools in the system message; no reasoning",
)

DETECT = [
    (30, lambda t: _ROLE in t and TOOL_CALL in t, GRANITE_3),
    (35, lambda t: _ROLE in t and OPEN in t, GRANITE_4),
]
