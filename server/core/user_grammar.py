"""A client's own GBNF grammar (llama.cpp's `grammar` request field), read before llama.cpp sees it.

llama.cpp parses a grammar recursively and expands `x{m,n}` into copies, so nesting or a repetition
count of a few thousand costs its stack or its memory, and a malformed grammar yields only a line in
its log. This reader follows llama.cpp's syntax (grammars/README.md) to name the first problem in a
400, and bounds what the server's own grammars are bounded by (`gbnf.py`): bytes, alternatives (the
sampler's time per token grows with them), and also nesting, repetition and rules; last, ambiguity
(grammar_stacks.py: the parses it keeps alive at once). llama.cpp still parses what passes here (it
refuses left recursion, for one); its refusal is a 400 too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidRequestError
from .gbnf import LIMIT_WHY, MAX_ALTERNATIVES, MAX_GRAMMAR_BYTES
from .grammar_stacks import ambiguity, find_blowup

MAX_NESTING = 32  # parentheses inside parentheses
MAX_REPETITION = 1000  # n in x{m,n}
MAX_RULES = 1024
MAX_SYMBOLS = 100_000  # symbols once repetitions are expanded, as llama.cpp expands them
_ESCAPES = {"x": 2, "u": 4, "U": 8}
_SIMPLE_ESCAPES = set('tnr\\"[]-^/')


class GrammarError(InvalidRequestError):
    """A `grammar` llama.cpp cannot use, or one past the server's limits: 400 naming the problem."""


@dataclass
class _Reader:
    text: str
    param: str
    pos: int = 0
    depth: int = 0
    alternatives: int = 0
    symbols: int = 0
    defined: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)

    def fail(self, problem: str, at: int | None = None) -> GrammarError:
        at = self.pos if at is None else at
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        near = self.text[at:at + 20].split("\n")[0]
        where = f" near {near!r}" if near else " at the end"
        return GrammarError(f"grammar: {problem} (line {line}, column {column}{where})", param=self.param,
                            code="invalid_grammar")

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def space(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            else:
                return

    def name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isascii() and
                                             (self.text[self.pos].isalnum() or self.text[self.pos] == "-")):
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting a rule name")
        return self.text[start:self.pos]

    def count(self) -> int:
        start = self.pos
        while self.peek().isascii() and self.peek().isdigit():
            self.pos += 1
        if self.pos == start:
            raise self.fail("expecting a number")
        # The whole number, leading zeros and all: llama.cpp reads every digit (0000000001001 is 1001).
        digits = self.text[start:self.pos].lstrip("0") or "0"
        if len(digits) > len(str(MAX_REPETITION)) or int(digits) > MAX_REPETITION:
            raise self.fail(f"a repetition of more than {MAX_REPETITION}, {LIMIT_WHY}", start)
        return int(digits)

    def char(self, end: str) -> None:
        if self.pos >= len(self.text):
            raise self.fail("unterminated string" if end == '"' else "unterminated character class")
        if self.text[self.pos] != "\\":
            self.pos += 1
            return
        kind = self.peek(2)[1:]
        if kind in _ESCAPES:
            digits = self.text[self.pos + 2:self.pos + 2 + _ESCAPES[kind]]
            if len(digits) != _ESCAPES[kind] or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise self.fail(f"\\{kind} needs {_ESCAPES[kind]} hex digits")
            self.pos += 2 + _ESCAPES[kind]
        elif kind in _SIMPLE_ESCAPES:
            self.pos += 2
        else:
            raise self.fail("unknown escape")

    def rule(self) -> None:
        start = self.pos
        name = self.name()
        self.space(newlines=False)
        if self.peek(3) != "::=":
            raise self.fail("expecting ::=")
        self.pos += 3
        self.space(newlines=True)
        self.defined.setdefault(name, start)
        if len(self.defined) > MAX_RULES:
            raise self.fail(f"more than {MAX_RULES} rules, {LIMIT_WHY}", start)
        self.alternates(nested=False)
        if self.peek() in ("\r", "\n"):
            self.pos += 1
        elif self.pos < len(self.text):
            raise self.fail("expecting a newline or the end")
        self.space(newlines=True)

    def alternates(self, nested: bool) -> None:
        self.sequence(nested)
        while self.peek() == "|":
            self.alternatives += 1
            self.pos += 1
            self.space(newlines=True)
            self.sequence(nested)

    def sequence(self, nested: bool) -> None:
        # Symbols as llama.cpp counts them: a literal's characters, one for a class, a rule or a group
        # (a group becomes a rule of its own); `last` is the item a repetition would copy (0: none).
        last = 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c in "\"[":
                end = '"' if c == '"' else "]"
                self.pos += 1
                if c == "[" and self.peek() == "^":
                    self.pos += 1
                start = self.pos
                while self.peek() != end:
                    self.char(end)
                last = max(1, self.pos - start) if c == '"' else 1
                self.pos += 1
            elif c == "<" or (c == "!" and self.peek(2) == "!<"):
                close = self.text.find(">", self.pos)
                if close < 0 or "\n" in self.text[self.pos:close]:
                    raise self.fail("unterminated token reference <...>")
                self.pos, last = close + 1, 1
            elif c.isascii() and (c.isalnum() or c == "-"):
                at = self.pos
                self.used.setdefault(self.name(), at)
                last = 1
            elif c == "(":
                if self.depth >= MAX_NESTING:
                    raise self.fail(f"parentheses nested more than {MAX_NESTING} deep")
                self.depth += 1
                self.pos += 1
                self.space(newlines=True)
                self.alternates(nested=True)
                last = 1
                if self.peek() != ")":
                    raise self.fail("expecting )")
                self.depth -= 1
                self.pos += 1
            elif c == ".":
                self.pos, last = self.pos + 1, 1
            elif c in "*+?{":
                if not last:
                    raise self.fail(f"{c} needs an item before it")
                last = self.repetition(last)
            else:
                break
            self.symbols += last
            if self.symbols > MAX_SYMBOLS:
                raise self.fail(f"more than {MAX_SYMBOLS} symbols once repetitions are expanded, {LIMIT_WHY}")
            self.space(newlines=nested)

    def repetition(self, item: int) -> int:
        """A repetition of an item of `item` symbols; the symbols it adds."""
        c = self.text[self.pos]
        self.pos += 1
        if c != "{":
            self.alternatives += 1
            return item
        self.space(newlines=False)
        lo = self.count()
        self.space(newlines=False)
        hi: int | None = lo
        if self.peek() == ",":
            self.pos += 1
            self.space(newlines=False)
            hi = self.count() if self.peek().isdigit() else None
            self.space(newlines=False)
        if self.peek() != "}":
            raise self.fail("expecting }")
        self.pos += 1
        if hi is not None and hi < lo:
            raise self.fail("a repetition {m,n} needs m <= n")
        self.alternatives += 1 if hi is None else hi - lo
        return item * max(lo, hi or 1, 1)


def check_grammar(text: str, param: str = "grammar") -> None:
    """Refuse a grammar llama.cpp would refuse or that costs past the limits, naming the problem."""
    if len(text.encode("utf-8")) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"grammar: more than {MAX_GRAMMAR_BYTES} bytes, {LIMIT_WHY}", param=param,
                           code="invalid_grammar")
    reader = _Reader(text, param)
    if "\x00" in text:  # llama.cpp reads a C string: it would never see what follows
        raise reader.fail("a NUL character (write it as \\x00)", text.index("\x00"))
    reader.space(newlines=True)
    if reader.pos == len(text):
        raise reader.fail("the grammar has no rules")
    while reader.pos < len(text):
        reader.rule()
        if reader.alternatives > MAX_ALTERNATIVES:
            raise reader.fail(f"more than {MAX_ALTERNATIVES} alternatives (|, ?, *, +, repetitions), {LIMIT_WHY}")
    for name, at in reader.used.items():
        if name not in reader.defined:
            raise reader.fail(f"rule {name!r} is used but not defined", at)
    if "root" not in reader.defined:
        raise reader.fail("the grammar needs a rule named 'root' (where the output starts)", 0)
    blowup = find_blowup(text)
    if blowup is not None:
        raise GrammarError(f"grammar: the grammar {ambiguity(blowup)}; make its alternatives differ sooner",
                           param=param, code="invalid_grammar")
