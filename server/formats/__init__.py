"""Chat formats: each model family's tool calls and reasoning markers, detected from its chat template."""

from .base import ChatFormat, Reasoning, ToolCall, ToolRule, ToolSyntax
from .detect import GENERIC, detect, formats
from .hermes import HERMES

__all__ = ["GENERIC", "HERMES", "ChatFormat", "Reasoning", "ToolCall", "ToolRule", "ToolSyntax", "detect", "formats"]
