"""GBNF text for llama.cpp's grammar sampler: rules, the built-in JSON ones, and a bound on their cost."""

from __future__ import annotations

import re

from ..errors import InvalidRequestError
from .grammar_stacks import ambiguity, find_blowup

# What one grammar may cost. The engine samples all sequences on one thread, so the grammar
# sampler's time per token is added to every other request's tokens. That time grows with the
# alternatives alive at once (enum values, optional properties, anyOf branches), hardly with
# bytes. Measured with `.venv/bin/python bench/bench_grammar_size.py 64 128 256` on the dev
# machine (2 loaded cores, SmolLM2's 49k-token vocabulary), the worst token (the grammar
# filtering the whole vocabulary; about 40 ms for a small grammar):
#   an enum of 64 / 128 / 256 strings sharing a prefix (the costliest shape): 0.2 / 0.35 / 0.7 s
#   64 / 128 / 256 optional properties (127 / 255 / 511 alternatives): 0.08 / 0.13 / 0.2 s
#   1500 required properties (105 kB, no alternatives): 40 ms; 80 ms to convert, 14 ms to parse
# 256 lets an enum of every country code or an object of ~128 optional properties through; at
# the limit a grammar's worst token costs at most about 0.7 s here, and most tokens far less
# (the sampler checks the chosen token alone first). A bigger vocabulary costs more per
# alternative (Llama 3's 128k tokens: 2.6x). The probe's 10k-value enum cost 14.8 s a token.
MAX_ALTERNATIVES = 256
MAX_GRAMMAR_BYTES = 128 * 1024
LIMIT_WHY = "the limit on a grammar's size (a grammar slows down every request on this server)"

_BASE_RULES = {
    "ws": '" "?',
    "char": r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": '"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws (string ws ":" ws value ("," ws string ws ":" ws value)*)? ws "}"',
    "array": '"[" ws (value ("," ws value)*)? ws "]"',
    "date": '[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])',
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
             '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])'),
    "hex": "[0-9a-fA-F]",
}
FORMATS = ("date", "date-time", "time", "uuid")  # string formats a grammar writes
_DEPS = {
    "string": ["char"], "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["ws", "string", "value"], "array": ["ws", "value"],
}


class SchemaError(InvalidRequestError):
    """A schema nomoat cannot enforce: 400, naming the keyword and where it is."""


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


# What is not an alternative's `|`: string literals and character classes.
_QUOTED = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')


def repeat(item: str, lo: int, hi: int | None, sep: str) -> str:
    """`item` lo..hi times with `sep` between (hi None: unbounded)."""
    if hi == 0:
        return ""
    if lo == 0:
        more = "" if hi is None else f"{{0,{hi - 1}}}"
        return f"({item} ({sep} {item}){more or '*'})?"
    tail = f"{{{lo - 1},{'' if hi is None else hi - 1}}}"
    return f"{item} ({sep} {item}){tail}"


class GrammarRules:
    """The rules of one GBNF grammar, refused with a SchemaError past `max_bytes` or `max_alternatives`.

    Alternatives are the `|` branches of all rules together: what the sampler's time per token
    grows with. `param` names the request field the rules come from, for errors.
    """

    def __init__(self, param: str, *, max_bytes: int = MAX_GRAMMAR_BYTES,
                 max_alternatives: int = MAX_ALTERNATIVES) -> None:
        self.param = param
        self.max_bytes = max_bytes
        self.max_alternatives = max_alternatives
        self.rules: dict[str, str] = {}
        self.size_bytes = 0
        self.alternatives = 0
        self._names: dict[tuple[str, str], str] = {}  # (hint, body) -> name: identical rules share one
        self._count = 0

    def add(self, body: str, hint: str = "r") -> str:
        """A new rule (identical bodies share one name)."""
        name = self._names.get((hint, body))
        if name is None:
            name = self._names[(hint, body)] = self.new_name(hint)
            self.define(name, body)
        return name

    def new_name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}{self._count}"

    def base(self, name: str) -> str:
        """One of the built-in rules (ws, string, value, ...), added with what it needs."""
        if name not in self.rules:
            self.define(name, _BASE_RULES[name])
            for dep in _DEPS.get(name, []):
                self.base(dep)
        return name

    def quoted_format(self, fmt: str) -> str:
        """A rule for a JSON string in `fmt`, one of FORMATS."""
        if fmt == "uuid":
            h = self.base("hex")
            body = " \"-\" ".join(f"{h}{{{n}}}" for n in (8, 4, 4, 4, 12))
        elif fmt == "date-time":
            body = f'{self.base("date")} "T" {self.base("time")}'
        else:
            body = self.base(fmt)
        return self.add(f'"\\"" {body} "\\""')

    def define(self, name: str, body: str) -> None:
        """Set rule `name` (in the place it already has, if any), within the limits."""
        self.size_bytes += len(name) + len(body) + 6  # "name ::= body\n"
        self.alternatives += _QUOTED.sub("", body).count("|")
        if self.size_bytes > self.max_bytes:
            raise self.fail("", f"needs a grammar of more than {self.max_bytes} bytes, {LIMIT_WHY}")
        if self.alternatives > self.max_alternatives:
            raise self.fail("", f"needs a grammar of more than {self.max_alternatives} alternatives (enum values, "
                                f"optional properties, anyOf branches, ...), {LIMIT_WHY}")
        self.rules[name] = body

    def text(self, root: str) -> str:
        """The grammar's text, refused if it keeps too many parses alive at once (grammar_stacks.py)."""
        text = "\n".join([f"root ::= {root}"] + [f"{n} ::= {b}" for n, b in self.rules.items()])
        blowup = find_blowup(text)
        if blowup is not None:
            raise self.fail("", f"needs a grammar that {ambiguity(blowup)}: its anyOf/oneOf branches or enum "
                                "values overlap too much")
        return text

    def fail(self, path: str, message: str) -> SchemaError:
        where = f" at {path}" if path else ""
        return SchemaError(f"the JSON schema{where} {message}", param=self.param, code="unsupported_schema")
