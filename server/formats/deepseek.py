"""DeepSeek's calls: R1's fenced JSON and V3.1's bare JSON between fullwidth `｜` / `▁` markers, and V3.2 / V4's
DSML invoke blocks (minimax.py's InvokeSyntax under a `｜DSML｜` namespace):

    R1:   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```<｜tool▁call▁end｜>
          ...<｜tool▁calls▁end｜>
    V3.1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜><｜tool▁calls▁end｜>
    V3.2: <｜DSML｜function_calls>\n<｜DSML｜invoke name="NAME">\n
          <｜DSML｜parameter name="k" string="true">v</｜DSML｜parameter>\n...
    V4:   the same in a <｜DSML｜tool_calls> block

All think in <think> blocks, which R1's and V3.x's templates open in the prompt themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import NOT_JSON, ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal
from .minimax import THINK, InvokeSyntax

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
FENCE = "```"
_CALL = re.compile(rf"{CALL_BEGIN}(.*?){SEP}(.*?)(?:{CALL_END}|\Z)", re.S)
# R1's body: the name on its own line, then the arguments in a ```json fence (the closing one may be cut).
_FENCED = re.compile(r"([^\n`]*?)[ \t]*\n\s*```(?:json)?[ \t]*\n?(.*)", re.S)


def _name_and_args(head: str, body: str) -> tuple[str, str] | None:
    """A call's name and its arguments' text, R1's fenced form or V3.1's; None while the name is unfinished."""
    if head.strip() == "function":
        m = _FENCED.match(body)
        if m is None:
            return None
        args = m.group(2).rstrip()
        return m.group(1).strip(), args.rstrip("`").rstrip()
    return head.strip(), body.strip()


class DeepSeekSyntax(ToolSyntax):
    """R1's and V3.1's calls (either is read); `fenced` says which one forced calls write."""

    starts = (CALLS_BEGIN,)

    def __init__(self, name: str, *, fenced: bool) -> None:
        self.name, self.fenced = name, fenced

    def section_end(self, text: str) -> int | None:
        end = text.find(CALLS_END)
        return None if end < 0 else end + len(CALLS_END)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        calls = []
        for m in _CALL.finditer(section):
            parts = _name_and_args(m.group(1), m.group(2))
            if parts is None:
                return None
            name, text = parts
            if name not in names:
                continue
            try:
                args = json.loads(text)
            except NOT_JSON:
                return None
            if not isinstance(args, dict):
                return None
            calls.append(ToolCall(name, json.dumps(args, ensure_ascii=False)))
        return calls or None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        calls = []
        for m in _CALL.finditer(section):
            parts = _name_and_args(m.group(1), m.group(2))
            if parts is not None and parts[0] in names:
                calls.append(ToolCall(*parts))
        return calls

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        if self.fenced:
            alts = [b.add(f"{literal(f'function{SEP}{t.name}' + chr(10) + FENCE + 'json' + chr(10))} {t.arguments} "
                          f"{literal(chr(10) + FENCE)}") for t in tools]
        else:
            alts = [b.add(f"{literal(t.name + SEP)} {t.arguments}") for t in tools]
        call = b.add(f'{literal(CALL_BEGIN)} ({" | ".join(alts)}) {literal(CALL_END)}', "call")
        # R1's template puts a newline between calls; V3.1's writes them back to back.
        more = f'({literal(chr(10)) + " " if self.fenced else ""}{call}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        return b.add(f"{literal(CALLS_BEGIN)} {call} {more} {literal(CALLS_END)}")


_MARKERS = (CALLS_BEGIN, CALL_BEGIN, SEP, CALL_END, CALLS_END, *THINK)
DSML = "｜DSML｜"
# V3.2 / V4 may call a tool before closing their thinking: the block ends at the call (llama.cpp's thinking_end_tags).
_DSML_THINKING = Reasoning(*THINK, ends=(f"<{DSML}function_calls>", f"<{DSML}tool_calls>"))

DEEPSEEK_R1 = ChatFormat(
    "deepseek-r1", DeepSeekSyntax("deepseek-r1", fenced=True), Reasoning(*THINK), preserved=_MARKERS,
    note="<｜tool▁calls▁begin｜> with ```json fenced arguments; <think> reasoning, opened by the prompt")
DEEPSEEK_V3_1 = ChatFormat(
    "deepseek-v3.1", DeepSeekSyntax("deepseek-v3.1", fenced=False), Reasoning(*THINK), preserved=_MARKERS,
    note="<｜tool▁calls▁begin｜> with NAME<｜tool▁sep｜>JSON calls; <think> reasoning when `thinking` is on")
DEEPSEEK_V3_2 = ChatFormat(
    "deepseek-v3.2", InvokeSyntax("deepseek-v3.2", [f"{DSML}function_calls", f"{DSML}tool_calls"], ns=DSML, typed=True),
    _DSML_THINKING, preserved=(DSML, *THINK),
    note='<｜DSML｜function_calls> blocks of invoke/parameter tags (string="true|false"); <think> reasoning')
DEEPSEEK_V4 = ChatFormat(
    "deepseek-v4", InvokeSyntax("deepseek-v4", [f"{DSML}tool_calls", f"{DSML}function_calls"], ns=DSML, typed=True),
    _DSML_THINKING, preserved=(DSML, *THINK),
    note='<｜DSML｜tool_calls> blocks of invoke/parameter tags (string="true|false"); <think> reasoning')


def _dsml(src: str) -> bool:
    return "dsml_token" in src and DSML in src


DETECT = [
    # V3.2 names its block function_calls, V4 tool_calls (as common/parsers/deepseek.cpp tells them apart).
    (20, lambda src: _dsml(src) and "function_calls" in src, DEEPSEEK_V3_2),
    (21, _dsml, DEEPSEEK_V4),
    # R1's templates fence the arguments in ```json; V3.1's write them bare.
    (30, lambda src: CALLS_BEGIN in src and FENCE + "json" not in src, DEEPSEEK_V3_1),
    (31, lambda src: CALLS_BEGIN in src, DEEPSEEK_R1),
]
