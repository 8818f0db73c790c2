"""GLM 4.6 / 4.7's calls: the name, then each argument as an <arg_key>/<arg_value> pair, in a <tool_call> block:

    4.6: <tool_call>NAME\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>
    4.7: <tool_call>NAME<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>

Either spacing is read; forced calls write the template's. A value is JSON when it parses as JSON, else the
raw text (minimax.py's xml_value). Both think in <think>; 4.7's prompt opens the block itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .base import ChatFormat, Reasoning, RuleBuilder, ToolCall, ToolRule, ToolSyntax, literal
from .minimax import THINK, params_rule, xml_value

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"<tool_call>\s*([^<\s]+)\s*(?=<arg_key>|</tool_call>|\Z)")
_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


class GlmSyntax(ToolSyntax):
    """One call per <tool_call> block (parallel calls are successive blocks); `newlines`: 4.6's spacing."""

    starts = (OPEN,)

    def __init__(self, name: str, *, newlines: bool) -> None:
        self.name, self._nl = name, "\n" if newlines else ""

    def section_end(self, text: str) -> int | None:
        end = text.find(CLOSE)
        return None if end < 0 else end + len(CLOSE)

    def _call(self, section: str, names: set[str]) -> ToolCall | None:
        m = _NAME.match(section)
        if m is None or m.group(1) not in names:
            return None
        args = {p.group(1).strip(): xml_value(p.group(2)) for p in _PAIR.finditer(section, m.end())}
        return ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        call = self._call(section, names)
        return [call] if call is not None else None

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        # A name is whole once something follows it; the arguments are the pairs it closed.
        if CLOSE not in section and not re.search(r"[\s<]", section[len(OPEN):].lstrip()):
            return []
        call = self._call(section, names)
        return [call] if call is not None else []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        nl = self._nl

        def param(key: str, value: str, raw: bool) -> str:
            return f"{literal(f'<arg_key>{key}</arg_key>{nl}<arg_value>')} {value} {literal('</arg_value>' + nl)}"

        alts = [b.add(f"{literal(t.name + nl)} {params_rule(b, t, param)}") for t in tools]
        block = b.add(f'{literal(OPEN)} ({" | ".join(alts)}) {literal(CLOSE)}', "call")
        # 4.6's template starts each call on a new line; 4.7's writes them back to back.
        return block if max_calls == 1 else b.add(f"{block} ({literal(nl) + ' ' if nl else ''}{block}){{0,{max_calls - 1}}}")


_PRESERVED = (OPEN, CLOSE, "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", *THINK)
GLM_4_6 = ChatFormat("glm-4.6", GlmSyntax("glm-4.6", newlines=True), Reasoning(*THINK), preserved=_PRESERVED,
                     note="<tool_call>NAME with <arg_key>/<arg_value> pairs, one per line; <think> reasoning")
GLM_4_7 = ChatFormat("glm-4.7", GlmSyntax("glm-4.7", newlines=False), Reasoning(*THINK), preserved=_PRESERVED,
                     note="<tool_call>NAME<arg_key>/<arg_value> pairs back to back; <think> reasoning, opened by the prompt")


# Other templates that write GLM 4.7's tagged calls (Spark 2.5, Poolside Laguna), as llama.cpp's autoparser reads them.
TAGGED = ChatFormat("tagged-args", GlmSyntax("tagged-args", newlines=False), Reasoning(*THINK), preserved=_PRESERVED,
                    note="<tool_call>NAME<arg_key>/<arg_value> pairs (GLM 4.7's syntax); <think> reasoning")


def _glm(src: str) -> bool:
    # [gMASK] is GLM's own prefix: other templates with <arg_key> (Ling, Laguna, Spark) are not GLM's.
    return "[gMASK]" in src and "<arg_key>" in src


DETECT = [
    (20, lambda src: _glm(src) and "<tool_call>{function-name}\n<arg_key>" in src, GLM_4_6),
    (21, _glm, GLM_4_7),
    # Ling 3.0's template also tags arguments but writes calls inside its thinking: not claimed here.
    (80, lambda src: "<tool_call>" in src and "<arg_key>" in src and "<role>ASSISTANT</role>" not in src, TAGGED),
]
