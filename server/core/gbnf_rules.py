"""llama.cpp's GBNF parser in Python: grammar text into the rules of elements that llama-grammar.cpp builds.

Groups and repetitions become generated rules exactly as llama.cpp rewrites them (`S{m,n}` into m
copies and n-m nested optional rules), since the stacks a grammar keeps alive depend on those
rules (grammar_stacks.py runs them). What llama.cpp would refuse raises Unsupported.
"""

from __future__ import annotations

# llama.cpp's element types (enum llama_gretype).
END, ALT, REF, CHAR, NOT, UPPER, CHAR_ALT, ANY, TOKEN, TOKEN_NOT = range(10)
MAX_CHAR = 0x10FFFF
_ESCAPES = {"t": "\t", "r": "\r", "n": "\n"}
_HEX = {"x": 2, "u": 4, "U": 8}


class Unsupported(Exception):
    """A grammar llama.cpp refuses (malformed, undefined rules, left recursion): its own error says why."""


class Parser:
    """llama.cpp's llama_grammar_parser: GBNF text into rules of (type, value) elements."""

    def __init__(self, text: str) -> None:
        self.src = text + "\0"
        self.ids: dict[str, int] = {}
        self.rules: dict[int, list[tuple[int, int]]] = {}
        self.tokens: dict[str, int] = {}  # token references (<...>, !<...>) by their text

    def parse(self) -> list[list[tuple[int, int]]]:
        pos = self.space(0, True)
        while self.src[pos] != "\0":
            pos = self.rule(pos)
        if "root" not in self.ids or any(i not in self.rules for i in self.ids.values()):
            raise Unsupported
        return [self.rules[i] for i in range(len(self.ids))]

    def symbol(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))

    def generated(self, base: str) -> int:
        n = len(self.ids)
        self.ids[f"{base}_{n}"] = n
        return n

    def space(self, pos: int, newlines: bool) -> int:
        src = self.src
        while src[pos] in " \t#" or (newlines and src[pos] in "\r\n"):
            if src[pos] == "#":
                while src[pos] not in "\0\r\n":
                    pos += 1
            else:
                pos += 1
        return pos

    def name(self, pos: int) -> int:
        start = pos
        while self.src[pos].isascii() and (self.src[pos].isalnum() or self.src[pos] == "-"):
            pos += 1
        if pos == start:
            raise Unsupported
        return pos

    def char(self, pos: int) -> tuple[int, int]:
        src = self.src
        if src[pos] == "\\":
            kind = src[pos + 1]
            if kind in _HEX:
                digits = src[pos + 2:pos + 2 + _HEX[kind]]
                try:
                    return int(digits, 16), pos + 2 + _HEX[kind]
                except ValueError:
                    raise Unsupported from None
            if kind in _ESCAPES:
                return ord(_ESCAPES[kind]), pos + 2
            if kind in '\\"[]-':
                return ord(kind), pos + 2
            raise Unsupported
        if src[pos] == "\0":
            raise Unsupported
        return ord(src[pos]), pos + 1

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        rule_id = self.symbol(name)
        pos = self.space(end, False)
        if self.src[pos:pos + 3] != "::=":
            raise Unsupported
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, False)
        if self.src[pos] == "\r":
            pos += 2 if self.src[pos + 1] == "\n" else 1
        elif self.src[pos] == "\n":
            pos += 1
        elif self.src[pos] != "\0":
            raise Unsupported
        return self.space(pos, True)

    def alternates(self, pos: int, name: str, rule_id: int, nested: bool) -> int:
        rule: list[tuple[int, int]] = []
        pos = self.sequence(pos, name, rule, nested)
        while self.src[pos] == "|":
            rule.append((ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), name, rule, nested)
        rule.append((END, 0))
        self.rules[rule_id] = rule
        return pos

    def sequence(self, pos: int, name: str, rule: list[tuple[int, int]], nested: bool) -> int:
        src = self.src
        last = len(rule)
        while True:
            c = src[pos]
            if c == '"':
                pos, last = pos + 1, len(rule)
                while src[pos] != '"':
                    value, pos = self.char(pos)
                    rule.append((CHAR, value))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos, last = pos + 1, len(rule)
                start = CHAR
                if src[pos] == "^":
                    pos, start = pos + 1, NOT
                while src[pos] != "]":
                    value, pos = self.char(pos)
                    rule.append((CHAR_ALT if len(rule) > last else start, value))
                    if src[pos] == "-" and src[pos + 1] != "]":
                        value, pos = self.char(pos + 1)
                        rule.append((UPPER, value))
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                kind = TOKEN_NOT if c == "!" else TOKEN
                close = src.find(">", pos)
                if close < 0 or src[pos + (c == "!")] != "<":
                    raise Unsupported
                last = len(rule)
                rule.append((kind, self.tokens.setdefault(src[pos + (c == "!"):close + 1], len(self.tokens))))
                pos = self.space(close + 1, nested)
            elif c.isascii() and (c.isalnum() or c == "-"):
                end = self.name(pos)
                last = len(rule)
                rule.append((REF, self.symbol(src[pos:end])))
                pos = self.space(end, nested)
            elif c == "(":
                sub = self.generated(name)
                pos = self.alternates(self.space(pos + 1, True), name, sub, True)
                last = len(rule)
                rule.append((REF, sub))
                if src[pos] != ")":
                    raise Unsupported
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last = len(rule)
                rule.append((ANY, 0))
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                pos = self.space(pos + 1, nested)
                self.repeat(rule, last, name, {"*": 0, "+": 1, "?": 0}[c], 1 if c == "?" else None)
            elif c == "{":
                pos, lo, hi = self.braces(self.space(pos + 1, nested), nested)
                self.repeat(rule, last, name, lo, hi)
            else:
                return pos

    def braces(self, pos: int, nested: bool) -> tuple[int, int, int | None]:
        lo, pos = self.integer(pos)
        pos = self.space(pos, nested)
        hi: int | None = lo
        if self.src[pos] == ",":
            pos = self.space(pos + 1, nested)
            hi = None
            if self.src[pos].isdigit():
                hi, pos = self.integer(pos)
                pos = self.space(pos, nested)
        if self.src[pos] != "}":
            raise Unsupported
        if lo > 2000 or (hi is not None and hi < lo):  # llama.cpp's MAX_REPETITION_THRESHOLD
            raise Unsupported
        return self.space(pos + 1, nested), lo, hi if hi is None or hi <= 2000 else None

    def integer(self, pos: int) -> tuple[int, int]:
        start = pos
        while self.src[pos].isascii() and self.src[pos].isdigit():
            pos += 1
        if pos == start:
            raise Unsupported
        return int(self.src[start:pos].lstrip("0") or "0"), pos

    def repeat(self, rule: list[tuple[int, int]], last: int, name: str, lo: int, hi: int | None) -> None:
        """llama.cpp's rewrite: S{m,n} -> S (m times) S'(n-m), S'(k) ::= S S'(k-1) | ; S{m,} -> S.. S', S' ::= S S' |"""
        if last == len(rule):
            raise Unsupported
        item = rule[last:]
        if lo == 0:
            del rule[last:]
        else:
            rule.extend(item * (lo - 1))
        n_opt = 1 if hi is None else hi - lo
        last_id = 0
        for i in range(n_opt):
            rec_id = self.generated(name)
            rec = list(item)
            if i > 0 or hi is None:
                rec.append((REF, rec_id if hi is None else last_id))
            self.rules[rec_id] = [*rec, (ALT, 0), (END, 0)]
            last_id = rec_id
        if n_opt > 0:
            rule.append((REF, last_id))


def left_recursive(rules: list[list[tuple[int, int]]]) -> bool:
    """llama_grammar_detect_left_recursion over every rule (llama.cpp refuses such a grammar).

    The same walk, iterative: generated repetition rules chain thousands deep.
    """
    n = len(rules)
    visited, in_progress = [False] * n, [False] * n
    may_be_empty = [any(t in (END, ALT) and (i == 0 or rule[i - 1][0] == ALT) for i, (t, _) in enumerate(rule))
                    for rule in rules]
    for first in range(n):
        if visited[first]:
            continue
        # Frames: (rule, next element to look at, whether that element may still be leftmost).
        frames = [(first, 0, True)]
        in_progress[first] = True
        while frames:
            i, at, descend = frames.pop()
            rule = rules[i]
            while at < len(rule):
                t, v = rule[at]
                at += 1
                if t == REF and descend:
                    if in_progress[v]:
                        return True
                    if not visited[v]:
                        frames.append((i, at - 1, True))  # come back to this reference once v is done
                        frames.append((v, 0, True))
                        in_progress[v] = True
                        break
                    descend = may_be_empty[v]
                else:
                    descend = t in (END, ALT)
            else:
                in_progress[i] = False
                visited[i] = True
    return False
