"""How to read one run's output: where its thinking starts, and how its model's family writes calls.

Every wire protocol reads a generation's text through one Reading (Run.reading), whole or streamed,
so the three APIs find the same reasoning and the same calls in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.types import ModelInfo
from ..formats import GENERIC, ChatFormat, ToolCall, ToolSyntax
from .reasoning import Splitter, split_reasoning, splitter
from .tool_calls import ToolStream, parse_output
from .tools import ToolPlan, call_syntax


@dataclass(frozen=True)
class Reading:
    started: bool | None = False  # the prompt left a thinking block open; None: no block is split off
    fmt: ChatFormat = GENERIC
    syntax: ToolSyntax = GENERIC.tools

    @classmethod
    def of(cls, info: ModelInfo, started: bool | None) -> Reading:
        return cls(started, info.chat_format, call_syntax(info))

    def splitter(self) -> Splitter:
        return splitter(self.started, self.fmt)

    def tool_stream(self, plan: ToolPlan) -> ToolStream | None:
        return ToolStream(plan, self.syntax) if plan.active else None

    def split(self, text: str) -> tuple[str | None, str]:
        """A finished output's reasoning (None without a block) and the rest."""
        return split_reasoning(text, self.started, self.fmt)

    def parse(self, text: str, plan: ToolPlan, *, cut: bool = False) -> tuple[str, list[ToolCall]]:
        """The content and calls in what follows the reasoning; `cut`: max_tokens ended the output."""
        return parse_output(text, plan, cut=cut, syntax=self.syntax)
