"""How many parses a GBNF grammar keeps alive at once, found before llama.cpp runs it (a model of its stack machine).

llama.cpp's grammar sampler keeps one pushdown stack per way the output so far can be parsed
(`llama_grammar_advance_stack` in src/llama-grammar.cpp merges only identical stacks), and every
token costs work in proportion to them: filtering the vocabulary checks each candidate against
each stack. An ambiguous grammar multiplies them: with `a ::= "x" a "y" | "x" a "z" | "w"` each
`x` doubles the stacks, since their pending continuations (`y...` or `z...`) differ, and thirty
tokens stall the engine thread that every request on the model shares. Size limits do not see
this (that grammar is 40 bytes): ambiguity, not size, is the cost.

This module runs the same stack machine in Python over the rules llama.cpp would build
(gbnf_rules.py parses a grammar as llama.cpp does), and searches for an input that makes it keep
too many stacks: from a stack set it tries one character of every class boundary the live stacks'
terminals draw, and it extends the sets with the most stacks first. The search is bounded (depth
and work), so it costs tens of milliseconds at most and cannot itself be a way to stall the
server; what it cannot find in that budget the engine's runtime guard (engine/grammar_guard.py)
still stops. Out of work it lets the grammar pass: free-form JSON alone has more states than any
budget, and refusing it would refuse every json_object request.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from dataclasses import dataclass

from ..engine.grammar_guard import MAX_LIVE_STACKS
from .gbnf_rules import ALT, ANY, CHAR, CHAR_ALT, END, MAX_CHAR, REF, TOKEN, TOKEN_NOT, UPPER, Parser, Unsupported, left_recursive

# The bound is the engine's own (MAX_LIVE_STACKS, engine/grammar_guard.py, which says why it is
# where it is): what passes here keeps within it for as far as the search looked.
# How far the search looks: characters down one path, and the stacks it may build in all (about
# 35 ms of Python on a loaded 2-core box; a 128 KiB grammar takes about as long again to parse).
# The schema grammars of the test suite finish in at most ~16k; an ambiguous one is found in a few
# thousand (two overlapping anyOf branches at every nesting level: 70k).
SEARCH_DEPTH = 64
SEARCH_WORK = 100_000
SEARCH_TOP = 6  # the top elements of each stack that tell states apart (_key)


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


def accepts(text: str, output: str) -> bool:
    """Whether grammar `text` accepts `output` whole, character by character as llama.cpp's stacks would (a
    family's forced-call grammar against what its model writes: tests/test_formats_*.py)."""
    parser = Parser(text)
    machine = _Machine(parser.parse(), parser.ids["root"], list(parser.tokens))
    stacks = machine.start()
    for ch in output:
        machine.work = 0  # the search budget is per search, not per string
        stacks = machine.accept(stacks, ord(ch))
        if not stacks:
            return False
    return () in stacks


@functools.lru_cache(maxsize=64)  # texts up to 128 KiB each: 8 MiB at most
def _find_blowup(text: str, limit: int) -> Blowup | None:
    try:
        parser = Parser(text.split("\x00", 1)[0])  # llama.cpp reads a C string
        machine = _Machine(parser.parse(), parser.ids["root"], list(parser.tokens))
    except (Unsupported, RecursionError):
        return None
    try:
        return machine.search(limit)
    except _OutOfWork:
        return None


class _OutOfWork(Exception):
    """The search built SEARCH_WORK stacks without finding a blowup."""


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
        if left_recursive(rules):
            raise Unsupported
        # Each rule's alternatives, as the position each begins at.
        self.alts: list[list[int]] = []
        for start, rule in zip(starts, rules, strict=True):
            alts = [start]
            for i, (t, _) in enumerate(rule):
                if t == ALT:
                    alts.append(start + i + 1)
            self.alts.append(alts)
        self.root = root
        self.token_names = tokens
        self.token_ids = {name: i for i, name in enumerate(tokens)}
        self.classes: dict[int, tuple[bool, tuple[tuple[int, int], ...], int]] = {}
        self.work = 0

    def end(self, pos: int) -> bool:
        return self.types[pos] in (END, ALT)

    def advance(self, stack: Stack, out: dict[Stack, None]) -> None:
        """llama_grammar_advance_stack: expand rule references until each stack tops on a terminal."""
        types, values, alts, ends = self.types, self.values, self.alts, (END, ALT)
        todo, seen = [stack], set()
        while todo:
            cur = todo.pop()
            if cur in seen:
                continue
            seen.add(cur)
            self.work += 1
            if self.work > SEARCH_WORK:
                raise _OutOfWork
            if not cur or types[cur[-1]] != REF:
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
            positive, ranges, at = self.types[pos] in (CHAR, ANY), [], pos
            while True:
                if self.types[at + 1] == UPPER:
                    ranges.append((self.values[at], self.values[at + 1]))
                    at += 2
                else:
                    ranges.append((0, MAX_CHAR) if self.types[at] == ANY else (self.values[at], self.values[at]))
                    at += 1
                if self.types[at] != CHAR_ALT:
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
                if kind not in (TOKEN, TOKEN_NOT) or (self.values[top] == self.token_ids.get(symbol)) != (kind == TOKEN):
                    continue
                after = top + 1
            elif kind in (TOKEN, TOKEN_NOT):
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
            if kind in (TOKEN, TOKEN_NOT):
                tokens[self.token_names[self.values[top]]] = None
                if kind == TOKEN_NOT:
                    tokens["<other>"] = None
                continue
            ranges = self.char_class(top)[1]
            self.spend(len(ranges))
            for lo, hi in ranges:
                cuts.update((lo, hi + 1))
        return [c for c in sorted(cuts) if c <= MAX_CHAR] + list(tokens)

    def search(self, limit: int) -> Blowup | None:
        """The input keeping the most stacks alive, searched best first; the first past `limit` is returned.

        Best first, not breadth first: the stack sets with the most stacks are extended first,
        so a path that keeps multiplying them is followed at once, whatever else the grammar
        offers beside it; a set seen before is not extended again.
        """
        start = self.start()
        if len(start) > limit:
            return Blowup("", len(start))
        seen = {_key(start)}
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
                key = _key(after)
                if key not in seen:
                    seen.add(key)
                    heapq.heappush(todo, (-len(after), depth - 1, next(order), text, after))
        return None


def _key(stacks: dict[Stack, None]) -> tuple[int, frozenset[Stack]]:
    """What tells stack sets apart for the search: their size and their stacks' top SEARCH_TOP elements.

    Nesting (`[[[[`, `{"a":{"a":`) makes new stacks that differ only far below their tops, which the
    next characters never reach: as many, alike on top, they are one state to the search, which then
    spends its work elsewhere. Sets that grow still differ by size.
    """
    return len(stacks), frozenset(stack[-SEARCH_TOP:] for stack in stacks)
