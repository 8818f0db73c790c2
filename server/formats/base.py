"""A chat format: how one model family writes tool calls and reasoning, and how both are read back.

A family is detected from its chat template (formats/detect.py). What a format holds is text only:
markers, how a section of calls ends and parses, and the grammar rule that forces its calls. The
generation core (core/tool_calls.py, core/reasoning.py) runs the same stream over every format, and
the wire protocols show what it finds their own way. docs/chat-formats.md has the family table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Output nested past the interpreter's limit (a grammar can make a model write it) is text, not a call: no 500.
NOT_JSON = (json.JSONDecodeError, RecursionError, ValueError)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON string, always
    id: str = field(default_factory=new_call_id)

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out = {"index": index, **out}
        return out


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class RuleBuilder(Protocol):
    """What a syntax needs of the grammar being built (core/structured.py's Grammar)."""

    def add(self, body: str, hint: str = "r") -> str:
        """A new rule with this body; its name."""
        ...

    def base(self, name: str) -> str:
        """A built-in rule: ws, string, value, object, number, integer, boolean, null."""
        ...


@dataclass(frozen=True)
class ToolRule:
    """One tool a forced call may use, as its grammar sees it."""

    name: str
    arguments: str  # the rule for its arguments: a JSON object valid against `schema`
    schema: dict[str, Any]  # its parameters (a JSON schema of type object)
    # The rule for one property's JSON value: value(property schema, property name).
    value: Callable[[Any, str], str]


def as_call(obj: Any, names: set[str], *, name_key: str = "name",
            args_keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall | None:
    """A call from a decoded JSON object that names a known tool, or None."""
    if not isinstance(obj, dict) or obj.get(name_key) not in names:
        return None
    args: Any = {}
    for key in args_keys:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except NOT_JSON:
            return None
    if not isinstance(args, dict):
        return None
    call = ToolCall(obj[name_key], json.dumps(args, ensure_ascii=False))
    if isinstance(obj.get("id"), str) and obj["id"]:
        call.id = obj["id"]
    return call


def json_value_end(text: str, start: int) -> int | None:
    """Where the JSON object or array starting at `start` ends (exclusive), or None if it does not yet."""
    depth, in_string, escape = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def loads_prefix(text: str, start: int = 0) -> tuple[Any, int] | None:
    """The JSON value at `start` (after whitespace) and where it ends, or None if none is complete there."""
    i = start
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    try:
        return json.JSONDecoder().raw_decode(text, i)
    except NOT_JSON:
        return None


def partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (text that may still become it)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0



class ToolSyntax:
    """How a family writes calls. A section is the text from one of `starts` to the end of the calls
    it holds; text outside sections is content. Subclasses set the markers and the methods below."""

    name = "base"
    # Text that opens a section of calls. Content before it streams out; a partial one is held back.
    starts: tuple[str, ...] = ()
    # A whole output that is one JSON call (or a list of them) counts too, as Llama 3 writes it.
    bare_json: bool = False

    def section_end(self, text: str) -> int | None:
        """`text` begins with one of `starts`: where its section ends (exclusive), or None while it may
        still go on (then the output's end closes it)."""
        raise NotImplementedError

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        """A complete section's calls, or None when it is not calls (it stays content)."""
        raise NotImplementedError

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        """A section max_tokens cut: the calls it holds, the last with the arguments written so far."""
        return self.parse(section, names) or []

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        """A grammar rule for 1..max_calls calls to `tools` in this syntax, arguments valid."""
        raise NotImplementedError


Kind = Literal["reasoning", "content"]


class Splitter(Protocol):
    """An output's text into (kind, text) pieces as it streams, holding back what may still become a marker
    (core/reasoning.py's ReasoningSplitter; a family with its own framing, gpt-oss's channels, brings one)."""

    @property
    def in_reasoning(self) -> bool:
        """Whether the text fed so far ends inside the reasoning (the Responses API counts its tokens)."""
        ...

    def feed(self, text: str) -> list[tuple[Kind, str]]: ...

    def finish(self) -> list[tuple[Kind, str]]: ...


def add_piece(out: list[tuple[Kind, str]], kind: Kind, text: str) -> None:
    """Append a splitter's piece, merged into the last one when it is of the same kind."""
    if not text:
        return
    if out and out[-1][0] == kind:
        out[-1] = (kind, out[-1][1] + text)
    else:
        out.append((kind, text))


@dataclass(frozen=True)
class Reasoning:
    """How a family marks its thinking: a block from `open` to `close` at the start of the output."""

    open: str = "<think>"
    close: str = "</think>"
    # Markers that end the block too, and stay for the tool stream: the call markers of families that call tools
    # without closing their thinking (Kimi K2-Thinking, DeepSeek V3.2), as llama.cpp's thinking_end_tags.
    ends: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatFormat:
    """One family's chat format."""

    name: str
    tools: ToolSyntax  # how its calls are written and read
    reasoning: Reasoning | None = Reasoning()  # None: it does not think in a block
    # Markers that wrap the answer itself (Command R's <|START_RESPONSE|>): dropped from content.
    wrappers: tuple[str, ...] = ()
    # Control tokens the engine renders as text (they carry the calls or the thinking), as
    # llama.cpp's preserved_tokens: a token these name renders; other special tokens render as nothing.
    preserved: tuple[str, ...] = ()
    # Call ids the template accepts in the history (Mistral's: 9 alphanumerics), from any the client sends.
    history_id: Callable[[str], str] | None = None
    # Whether the family has a tool syntax of its own; False: tools are described in a system message
    # and written as <tool_call> blocks (formats/hermes.py), as for a template that does not render tools.
    native_tools: bool = True
    # A custom splitter for the output's reasoning and content (gpt-oss's channels); None: the markers'.
    splitter: Callable[[bool | None], Splitter] | None = None
    note: str = ""  # what docs/chat-formats.md and the log say of it

    def starts_in_reasoning(self, prompt: str) -> bool:
        """Whether the rendered prompt leaves a thinking block open, so the output starts inside it."""
        return self.reasoning is not None and prompt.rstrip().endswith(self.reasoning.open)


class EitherSyntax(ToolSyntax):
    """A family's own calls or nomoat's <tool_call> blocks, for a model whose template renders no tools: the
    tools are described to it in <tool_call> terms, yet it was trained on its own syntax and may write that.
    A section belongs to the syntax whose start marker opens it; forced calls are written in the family's."""

    name = "either"

    def __init__(self, own: ToolSyntax, described: ToolSyntax) -> None:
        self.own, self.described = own, described
        self.starts = own.starts + tuple(s for s in described.starts if s not in own.starts)
        self.bare_json = own.bare_json or described.bare_json

    def _of(self, section: str) -> ToolSyntax:
        return self.own if section.startswith(self.own.starts) else self.described

    def section_end(self, text: str) -> int | None:
        return self._of(text).section_end(text)

    def parse(self, section: str, names: set[str]) -> list[ToolCall] | None:
        return self._of(section).parse(section, names)

    def parse_cut(self, section: str, names: set[str]) -> list[ToolCall]:
        return self._of(section).parse_cut(section, names)

    def calls_rule(self, b: RuleBuilder, tools: Sequence[ToolRule], max_calls: int) -> str:
        return self.own.calls_rule(b, tools, max_calls)
