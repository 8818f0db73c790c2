"""How many parses a GBNF grammar keeps alive at once, found before llama.cpp runs it (a model of its stack machine).

llama.cpp's grammar sampler keeps one pushdown stack per way the output so far can be parsed
(`llama_grammar_advance_stack` in src/llama-grammar.cpp merges only identical stacks), and every
token costs work in proportion to them: filtering the vocabulary checks each candidate against
each stack. An ambiguous grammar multiplies them: with `a ::= "x" a "y" | "x" a "z" | "w"` each
`x` doubles the stacks, since their pending continuations (`y...` or `z...`) differ, and thirty
tokens stall the engine thread that every request on the model shares. Size limits do not see
this (that grammar is 40 bytes): ambiguity, not size, is the cost.

This module parses a grammar the way llama.cpp does (rules, alternatives, character classes;
groups and repetitions become generated rules), runs the same stack machine in Python, and
searches for an input that makes it keep too many stacks: from the start, each step tries one
character of every class boundary the live stacks' terminals draw, and keeps the few stack sets
with the most stacks (a beam) to extend. The search is bounded (depth, beam, work), so it costs
milliseconds and cannot itself be a way to stall the server; what it cannot find in that budget
the engine's runtime guard (engine/grammar_guard.py) still stops.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from dataclasses import dataclass

from ..engine.grammar_guard import MAX_LIVE_STACKS

# The bound is the engine's own (MAX_LIVE_STACKS, engine/grammar_guard.py, which says why it is
# where it is): what passes here keeps within it for as far as the search looked.
# How far the search looks: characters down one path, and the stack elements it may touch in
# all (about 50 ms of Python on a loaded 2-core box at the worst).
SEARCH_DEPTH = 64
SEARCH_WORK = 100_000

# llama.cpp's element types (enum llama_gretype).
_END, _ALT, _REF, _CHAR, _NOT, _UPPER, _CHAR_ALT, _ANY, _TOKEN, _TOKEN_NOT = range(10)
_MAX_CHAR = 0x10FFFF
_ESCAPES = {"t": "\t", "r": "\r", "n": "\n"}
_HEX = {"x": 2, "u": 4, "U": 8}


@dataclass(frozen=True)
class Blowup:
    """An input after which the grammar keeps more than the limit of parses alive."""

    prefix: str
    stacks: int


def ambiguity(blowup: Blowup) -> str:
    """What a refusal says: the input found, the parses it leaves alive and the limit."""
    shown = repr(blowup.prefix if len(blowup.prefix) <= 40 else "..." + blowup.prefix[-40:])
    where = f"after {shown}" if blowup.prefix else "at its start"
    return (f"is ambiguous: {where} it keeps {blowup.stacks} parses alive at once, more than the limit of "
            f"{MAX_LIVE_STACKS} live parse stacks (each costs time on every token of every request on this "
            "model)")


def find_blowup(text: str, limit: int = MAX_LIVE_STACKS) -> Blowup | None:
    """An input making `text` keep more than `limit` stacks, if the bounded search finds one.

    None also when the grammar is one llama.cpp refuses (it says why itself) or the search ran
    out of work. Cached by text: the same schema or grammar is often sent again and again.
    """
    return _find_blowup(text, limit)


@functools.lru_cache(maxsize=64)  # texts up to 128 KiB each: 8 MiB at most
def _find_blowup(text: str, limit: int) -> Blowup | None:
    try:
        parser = _Parser(text.split("\x00", 1)[0])  # llama.cpp reads a C string
        machine = _Machine(parser.parse(), parser.ids["root"], list(parser.tokens))
    except (_Unsupported, RecursionError):
        return None
    try:
        return machine.search(limit)
    except _OutOfWork:
        return None


class _Unsupported(Exception):
    """A grammar llama.cpp refuses (malformed, undefined rules, left recursion): its own error says why."""


class _OutOfWork(Exception):
    """The search touched SEARCH_WORK stack elements without finding a blowup."""


class _Parser:
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
            raise _Unsupported
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
            raise _Unsupported
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
                    raise _Unsupported from None
            if kind in _ESCAPES:
                return ord(_ESCAPES[kind]), pos + 2
            if kind in '\\"[]-':
                return ord(kind), pos + 2
            raise _Unsupported
        if src[pos] == "\0":
            raise _Unsupported
        return ord(src[pos]), pos + 1

    def rule(self, pos: int) -> int:
        end = self.name(pos)
        name = self.src[pos:end]
        rule_id = self.symbol(name)
        pos = self.space(end, False)
        if self.src[pos:pos + 3] != "::=":
            raise _Unsupported
        pos = self.alternates(self.space(pos + 3, True), name, rule_id, False)
        if self.src[pos] == "\r":
            pos += 2 if self.src[pos + 1] == "\n" else 1
        elif self.src[pos] == "\n":
            pos += 1
        elif self.src[pos] != "\0":
            raise _Unsupported
        return self.space(pos, True)

    def alternates(self, pos: int, name: str, rule_id: int, nested: bool) -> int:
        rule: list[tuple[int, int]] = []
        pos = self.sequence(pos, name, rule, nested)
        while self.src[pos] == "|":
            rule.append((_ALT, 0))
            pos = self.sequence(self.space(pos + 1, True), name, rule, nested)
        rule.append((_END, 0))
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
                    rule.append((_CHAR, value))
                pos = self.space(pos + 1, nested)
            elif c == "[":
                pos, last = pos + 1, len(rule)
                start = _CHAR
                if src[pos] == "^":
                    pos, start = pos + 1, _NOT
                while src[pos] != "]":
                    value, pos = self.char(pos)
                    rule.append((_CHAR_ALT if len(rule) > last else start, value))
                    if src[pos] == "-" and src[pos + 1] != "]":
                        value, pos = self.char(pos + 1)
                        rule.append((_UPPER, value))
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                kind = _TOKEN_NOT if c == "!" else _TOKEN
                close = src.find(">", pos)
                if close < 0 or src[pos + (c == "!")] != "<":
                    raise _Unsupported
                last = len(rule)
                rule.append((kind, self.tokens.setdefault(src[pos + (c == "!"):close + 1], len(self.tokens))))
                pos = self.space(close + 1, nested)
            elif c.isascii() and (c.isalnum() or c == "-"):
                end = self.name(pos)
                last = len(rule)
                rule.append((_REF, self.symbol(src[pos:end])))
                pos = self.space(end, nested)
            elif c == "(":
                sub = self.generated(name)
                pos = self.alternates(self.space(pos + 1, True), name, sub, True)
                last = len(rule)
                rule.append((_REF, sub))
                if src[pos] != ")":
                    raise _Unsupported
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last = len(rule)
                rule.append((_ANY, 0))
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
            raise _Unsupported
        if lo > 2000 or (hi is not None and hi < lo):  # llama.cpp's MAX_REPETITION_THRESHOLD
            raise _Unsupported
        return self.space(pos + 1, nested), lo, hi if hi is None or hi <= 2000 else None

    def integer(self, pos: int) -> tuple[int, int]:
        start = pos
        while self.src[pos].isascii() and self.src[pos].isdigit():
            pos += 1
        if pos == start:
            raise _Unsupported
        return int(self.src[start:pos].lstrip("0") or "0"), pos

    def repeat(self, rule: list[tuple[int, int]], last: int, name: str, lo: int, hi: int | None) -> None:
        """llama.cpp's rewrite: S{m,n} -> S (m times) S'(n-m), S'(k) ::= S S'(k-1) | ; S{m,} -> S.. S', S' ::= S S' |"""
        if last == len(rule):
            raise _Unsupported
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
                rec.append((_REF, rec_id if hi is None else last_id))
            self.rules[rec_id] = [*rec, (_ALT, 0), (_END, 0)]
            last_id = rec_id
        if n_opt > 0:
            rule.append((_REF, last_id))


Stack = tuple[int, ...]


class _Machine:
    """llama.cpp's grammar stacks over one flat element array: a stack is a tuple of positions in it."""

    def __init__(self, rules: list[list[tuple[int, int]]], root: int, tokens: list[str]) -> None:
        self.types: list[int] = []
        self.values: list[int] = []
        starts = []
        for rule in rules:
            starts.append(len(self.types))
            self.types.extend(t for t, _ in rule)
            self.values.extend(v for _, v in rule)
        self.starts = starts
        if _left_recursive(rules):
            raise _Unsupported
        # Each rule's alternatives, as the position each begins at.
        self.alts: list[list[int]] = []
        for start, rule in zip(starts, rules, strict=True):
            alts = [start]
            for i, (t, _) in enumerate(rule):
                if t == _ALT:
                    alts.append(start + i + 1)
            self.alts.append(alts)
        self.root = root
        self.token_names = tokens
        self.token_ids = {name: i for i, name in enumerate(tokens)}
        self.classes: dict[int, tuple[bool, tuple[tuple[int, int], ...], int]] = {}
        self.work = 0

    def end(self, pos: int) -> bool:
        return self.types[pos] in (_END, _ALT)

    def advance(self, stack: Stack, out: dict[Stack, None]) -> None:
        """llama_grammar_advance_stack: expand rule references until each stack tops on a terminal."""
        types, values, alts, ends = self.types, self.values, self.alts, (_END, _ALT)
        todo, seen = [stack], set()
        while todo:
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            self.work += 1
            if self.work > SEARCH_WORK:
                raise _OutOfWork
            if not cur or types[cur[-1]] != _REF:
                out[cur] = None
                continue
            pos = cur[-1]
            base = cur[:-1] if types[pos + 1] in ends else (*cur[:-1], pos + 1)
            for alt in alts[values[pos]]:
                todo.append(base if types[alt] in ends else (*base, alt))

    def start(self) -> dict[Stack, None]:
        out: dict[Stack, None] = {}
        for alt in self.alts[self.root]:
            self.advance(() if self.end(alt) else (alt,), out)
        return out

    def spend(self, work: int) -> None:
        self.work += work
        if self.work > SEARCH_WORK:
            raise _OutOfWork

    def char_class(self, pos: int) -> tuple[bool, tuple[tuple[int, int], ...], int]:
        """The terminal at `pos` as llama_grammar_match_char reads it: taken or refused ranges, and what follows."""
        found = self.classes.get(pos)
        if found is None:
            positive, ranges, at = self.types[pos] in (_CHAR, _ANY), [], pos
            while True:
                if self.types[at + 1] == _UPPER:
                    ranges.append((self.values[at], self.values[at + 1]))
                    at += 2
                else:
                    ranges.append((0, _MAX_CHAR) if self.types[at] == _ANY else (self.values[at], self.values[at]))
                    at += 1
                if self.types[at] != _CHAR_ALT:
                    break
            found = self.classes[pos] = (positive, tuple(ranges), at)
        return found

    def accept(self, stacks: dict[Stack, None], symbol: int | str) -> dict[Stack, None]:
        """llama_grammar_accept for one character (an int) or one token reference (a str, its text)."""
        out: dict[Stack, None] = {}
        self.spend(len(stacks))
        for stack in stacks:
            if not stack:
                continue
            top = stack[-1]
            kind = self.types[top]
            if isinstance(symbol, str):
                if kind not in (_TOKEN, _TOKEN_NOT) or (self.values[top] == self.token_ids.get(symbol)) != (kind == _TOKEN):
                    continue
                after = top + 1
            elif kind in (_TOKEN, _TOKEN_NOT):
                continue
            else:
                positive, ranges, after = self.char_class(top)
                self.spend(len(ranges))
                if any(lo <= symbol <= hi for lo, hi in ranges) != positive:
                    continue
            self.advance(stack[:-1] if self.end(after) else (*stack[:-1], after), out)
        return out

    def choices(self, stacks: dict[Stack, None]) -> list[int | str]:
        """One input for each class of inputs that the stacks' terminals cannot tell apart."""
        cuts = {1}
        tokens: dict[int | str, None] = {}
        for top in {stack[-1] for stack in stacks if stack}:
            kind = self.types[top]
            if kind in (_TOKEN, _TOKEN_NOT):
                tokens[self.token_names[self.values[top]]] = None
                if kind == _TOKEN_NOT:
                    tokens["<other>"] = None
                continue
            ranges = self.char_class(top)[1]
            self.spend(len(ranges))
            for lo, hi in ranges:
                cuts.update((lo, hi + 1))
        return [c for c in sorted(cuts) if c <= _MAX_CHAR] + list(tokens)

    def search(self, limit: int) -> Blowup | None:
        """The input keeping the most stacks alive, searched best first; the first past `limit` is returned.

        Best first, not breadth first: the stack sets with the most stacks are extended first,
        so a path that keeps multiplying them is followed at once, whatever else the grammar
        offers beside it; a set seen before is not extended again.
        """
        start = self.start()
        if len(start) > limit:
            return Blowup("", len(start))
        seen = {frozenset(start)}
        order = itertools.count()
        todo: list[tuple[int, int, int, str, dict[Stack, None]]] = [(-len(start), 0, next(order), "", start)]
        while todo:
            _, depth, _, prefix, stacks = heapq.heappop(todo)
            if -depth >= SEARCH_DEPTH:
                continue
            for symbol in self.choices(stacks):
                after = self.accept(stacks, symbol)
                if not after:
                    continue
                text = prefix + (symbol if isinstance(symbol, str) else chr(symbol))
                if len(after) > limit:
                    return Blowup(text, len(after))
                key = frozenset(after)
                if key not in seen:
                    seen.add(key)
                    heapq.heappush(todo, (-len(after), depth - 1, next(order), text, after))
        return None


def _left_recursive(rules: list[list[tuple[int, int]]]) -> bool:
    """llama_grammar_detect_left_recursion over every rule (llama.cpp refuses such a grammar).

    The same walk, iterative: generated repetition rules chain thousands deep.
    """
    n = len(rules)
    visited, in_progress = [False] * n, [False] * n
    may_be_empty = [any(t in (_END, _ALT) and (i == 0 or rule[i - 1][0] == _ALT) for i, (t, _) in enumerate(rule))
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
                if t == _REF and descend:
                    if in_progress[v]:
                        return True
                    if not visited[v]:
                        frames.append((i, at - 1, True))  # come back to this reference once v is done
                        frames.append((v, 0, True))
                        in_progress[v] = True
                        break
                    descend = may_be_empty[v]
                else:
                    descend = t in (_END, _ALT)
            else:
                in_progress[i] = False
                visited[i] = True
    return False
