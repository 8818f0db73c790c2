"""Ling 3.0 (Bailing V3): GLM 4.6's tagged calls (formats/glm.py), one argument pair a line,

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

in <role>ASSISTANT</role> turns whose <think> block the template opens. As llama.cpp's ling3 parser, a call
written before the block is closed ends it (the text before is reasoning: Reasoning.ends), and an end of
turn the model spells out as text (`<|role_end|>`) is dropped from the content (a wrapper).
"""

from __future__ import annotations

from .base import ChatFormat, Reasoning
from .glm import CLOSE, OPEN, GlmSyntax
from .minimax import THINK

ROLE_END = "<|role_end|>"

LING_3 = ChatFormat(
    "ling-3", GlmSyntax("ling-3", newlines=True), Reasoning(*THINK, ends=(OPEN,)),
    wrappers=(ROLE_END,),
    preserved=(OPEN, CLOSE, "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", *THINK),
    note="<tool_call>NAME with <arg_key>/<arg_value> pairs, one per line; <think> opened by the template, "
         "closed by a call too")

# Before GLM's tagged-args catch-all (glm.py, 80): <role> turns are Ling's own among the <arg_key> templates.
DETECT = [(20, lambda src: "<role>ASSISTANT</role>" in src and "<arg_key>" in src, LING_3)]
