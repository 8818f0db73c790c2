"""The families that write Hermes' `<tool_call>` JSON blocks (formats/hermes.py): Hermes 2 Pro / 3,
Qwen 2.5, QwQ, Qwen3, MiMo-VL and SmolLM3, told apart by what each template says of thinking."""

from __future__ import annotations

from .base import ChatFormat, Reasoning
from .hermes import CLOSE, OPEN, HermesSyntax

SYNTAX = HermesSyntax()
_CALLS = (OPEN, CLOSE)
_THINKING = ("<think>", "</think>", *_CALLS)

# Hermes' template says nothing of thinking (test-chat.cpp 3349: "doesn't support thinking natively").
HERMES_2_PRO = ChatFormat("hermes-2-pro", SYNTAX, reasoning=None, preserved=_CALLS,
                          note="<tool_call> JSON blocks (Hermes 2 Pro and 3); no reasoning")
# QwQ's template opens <think> itself: its output starts inside the block (ChatFormat.starts_in_reasoning).
QWQ = ChatFormat("qwq", SYNTAX, Reasoning(), preserved=_THINKING,
                 note="<tool_call> JSON blocks; <think> opened by the template")
QWEN3 = ChatFormat("qwen3", SYNTAX, Reasoning(), preserved=_THINKING,
                   note="<tool_call> JSON blocks; <think> reasoning (enable_thinking)")
MIMO_VL = ChatFormat("mimo-vl", SYNTAX, Reasoning(), preserved=_THINKING,
                     note="<tool_call> JSON blocks; <think> reasoning")
# SmolLM3's template renders no tools: they go in a system message, and SmolLM3 writes <tool_call> blocks.
SMOLLM3 = ChatFormat("smollm3", SYNTAX, Reasoning(), preserved=_THINKING, native_tools=False,
                     note="tools described by nomoat, <tool_call> JSON blocks; <think> reasoning (/think, /no_think)")
# Any other template that writes <tool_call> JSON blocks, Qwen 2.5's first: its fine-tunes may think.
QWEN2_5 = ChatFormat("qwen2.5", SYNTAX, Reasoning(), preserved=_THINKING,
                     note="<tool_call> JSON blocks (Qwen 2.5 and other ChatML templates); <think> blocks split")


def _chatml_calls(template: str) -> bool:
    return OPEN in template and "<|im_start|>" in template


# After the families with markers of their own (10-50) that also write <tool_call>, and after Qwen3-Coder's
# <function=> blocks (formats/xml_function.py), which sit inside <tool_call> too.
DETECT = [
    (45, lambda t: "You are MiMo" in t and OPEN in t, MIMO_VL),
    (45, lambda t: "named SmolLM" in t and "/no_think" in t, SMOLLM3),
    (70, lambda t: _chatml_calls(t) and "json_to_python_type" in t, HERMES_2_PRO),
    (72, lambda t: _chatml_calls(t) and "assistant\\n<think>\\n" in t, QWQ),
    (75, lambda t: _chatml_calls(t) and "<think>" in t, QWEN3),
    (85, _chatml_calls, QWEN2_5),
]
