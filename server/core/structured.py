"""JSON Schema → GBNF: the grammars behind `response_format` and forced tool calls.

The grammar only lets the model write JSON that validates against the schema, and it keeps
to the bounds the schema gives (`maxLength`, `minimum`/`maximum`, `maxItems`, `enum`) so a
small model cannot run on forever inside a string or a number. Keywords that would need
more than a grammar (`pattern`, `uniqueItems`, `not`, ...) are refused by name, never
silently ignored: accepting a schema without enforcing it is the peer bug this replaces.

The JSON written is compact: one optional space after `:` and `,`, no newlines.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import InvalidRequestError
from .numbers import integer_bound, number_range

# Keywords that describe, not constrain: accepted and ignored.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "strict", "discriminator",
})
_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(),
    "null": set(),
}
_GENERIC = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}
_KNOWN = _GENERIC | set().union(*_BY_TYPE.values())
_FORMATS = {"date", "time", "date-time", "uuid"}

# Longest repetition a grammar may spell out: llama.cpp expands `x{0,n}` into n nested rules.
MAX_REPEAT = 4096
# Deepest schema nesting converted (each level is a Python call; real schemas stay far below).
MAX_DEPTH = 64

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
    "time": '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
    "hex": "[0-9a-fA-F]",
}
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


class Grammar:
    """Builds one GBNF grammar from any number of schemas; `root` is set by the caller."""

    def __init__(self, param: str) -> None:
        self.param = param  # the request field schemas come from, for error messages
        self.rules: dict[str, str] = {}
        self._docs: dict[str, Any] = {}
        self._refs: dict[tuple[str, str], str] = {}
        self._count = 0
        self._depth = 0

    # --- public -----------------------------------------------------------------------

    def schema_rule(self, schema: Any, *, doc_id: str, path: str, param: str | None = None) -> str:
        """The name of a rule matching JSON valid against `schema` (its `$ref`s resolve in itself)."""
        if param is not None:
            self.param = param
        self._docs[doc_id] = schema
        return self._visit(schema, doc_id, path)

    def add(self, body: str, hint: str = "r") -> str:
        """A new rule (identical bodies share one name)."""
        for name, existing in self.rules.items():
            if existing == body and name.startswith(hint):
                return name
        self._count += 1
        name = f"{hint}{self._count}"
        self.rules[name] = body
        return name

    def base(self, name: str) -> str:
        """One of the built-in rules (ws, string, value, ...), added with what it needs."""
        if name not in self.rules:
            self.rules[name] = _BASE_RULES[name]
            for dep in _DEPS.get(name, []):
                self.base(dep)
        return name

    def text(self, root: str) -> str:
        return "\n".join([f"root ::= {root}"] + [f"{n} ::= {b}" for n, b in self.rules.items()])

    # --- schemas ------------------------------------------------------------------------

    def _fail(self, path: str, message: str) -> SchemaError:
        where = f" at {path}" if path else ""
        return SchemaError(f"the JSON schema{where} {message}", param=self.param, code="unsupported_schema")

    def _visit(self, schema: Any, doc: str, path: str) -> str:
        if self._depth >= MAX_DEPTH:
            raise self._fail(path, f"nests deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return self._visit_one(schema, doc, path)
        finally:
            self._depth -= 1

    def _visit_one(self, schema: Any, doc: str, path: str) -> str:
        if schema is True or schema == {}:
            return self.base("value")
        if not isinstance(schema, dict):
            raise self._fail(path, f"must be an object, got {json.dumps(schema)[:40]}")
        unknown = sorted(k for k in schema if k not in _KNOWN and k not in _ANNOTATIONS)
        if unknown:
            raise self._fail(path, f"uses {', '.join(repr(k) for k in unknown)}, which nomoat cannot enforce "
                                   f"with a grammar (supported: {', '.join(sorted(_KNOWN))})")
        if "$ref" in schema:
            return self._ref(schema, doc, path)
        if "allOf" in schema:
            return self._visit(self._merge_all_of(schema, doc, path), doc, path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise self._fail(path, f"'{key}' must be a non-empty list")
                rest = {k: v for k, v in schema.items() if k != key}
                names = [self._visit({**rest, **alt} if isinstance(alt, dict) else alt, doc, f"{path}/{key}/{i}")
                         for i, alt in enumerate(alts)]
                return self.add(" | ".join(names))
        if "const" in schema:
            return self.add(literal(json.dumps(schema["const"], ensure_ascii=False)))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self._fail(path, "'enum' must be a non-empty list")
            return self.add(" | ".join(literal(json.dumps(v, ensure_ascii=False)) for v in values))
        types = schema.get("type")
        if types is None:
            types = self._infer_type(schema)
            if types is None:
                return self.base("value")
        if isinstance(types, list):
            if not types:
                raise self._fail(path, "'type' must not be an empty list")
            return self.add(" | ".join(self._typed(t, schema, doc, path) for t in types))
        return self._typed(types, schema, doc, path)

    @staticmethod
    def _infer_type(schema: dict) -> str | None:
        for type_ in ("object", "array", "string", "number"):
            if any(k in schema for k in _BY_TYPE[type_]):
                return type_
        return None

    def _typed(self, type_: Any, schema: dict, doc: str, path: str) -> str:
        if type_ not in _BY_TYPE:
            raise self._fail(path, f"has unknown type {type_!r}")
        if type_ == "object":
            return self._object(schema, doc, path)
        if type_ == "array":
            return self._array(schema, doc, path)
        if type_ == "string":
            return self._string(schema, path)
        if type_ in ("integer", "number"):
            return self._number(schema, path, integer=type_ == "integer")
        return self.base(type_)

    def _ref(self, schema: dict, doc: str, path: str) -> str:
        ref = schema["$ref"]
        key = (doc, str(ref))  # a ref that is no string fails in _resolve
        if key in self._refs:
            return self._refs[key]
        target = self._resolve(ref, doc, path)
        # Name the rule before visiting it, so recursive schemas refer to themselves.
        self._count += 1
        name = f"ref{self._count}"
        self._refs[key] = name
        self.rules[name] = ""  # placeholder: keeps the slot and the order
        self.rules[name] = self._visit(target, doc, ref)
        return name

    def _merge_all_of(self, schema: dict, doc: str, path: str) -> dict:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise self._fail(path, "'allOf' must be a non-empty list")
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for i, part in enumerate(parts):
            while isinstance(part, dict) and "$ref" in part and len(part) == 1:
                part = self._resolve(part["$ref"], doc, f"{path}/allOf/{i}")
            if not isinstance(part, dict):
                raise self._fail(f"{path}/allOf/{i}", "must be an object")
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                elif key in merged and merged[key] != value and key not in _ANNOTATIONS:
                    raise self._fail(f"{path}/allOf/{i}", f"combines two different {key!r}: allOf is supported "
                                                          "only to merge objects' properties")
                else:
                    merged[key] = value
        return merged

    def _resolve(self, ref: Any, doc: str, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self._fail(path, f"has $ref {ref!r}: only local references ('#/$defs/...') are supported")
        target: Any = self._docs[doc]
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")  # JSON pointer escapes
            if not isinstance(target, dict) or part not in target:
                raise self._fail(path, f"has $ref {ref!r}, which points nowhere in the schema")
            target = target[part]
        return target

    def _object(self, schema: dict, doc: str, path: str) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise self._fail(path, "'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise self._fail(path, "'required' must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise self._fail(path, f"requires {', '.join(map(repr, missing))}, which 'properties' does not define")
        extra = schema.get("additionalProperties")
        if not props:
            if isinstance(extra, dict) and extra:
                value = self._visit(extra, doc, f"{path}/additionalProperties")
                ws, string = self.base("ws"), self.base("string")
                kv = self.add(f'{string} {ws} ":" {ws} {value}')
                return self.add(f'"{{" {ws} ({kv} ("," {ws} {kv})*)? {ws} "}}"')
            # `"properties": {}` declares no properties (a function without parameters): only {}.
            if extra is False or ("properties" in schema and extra is None):
                return self.add(f'"{{" {self.base("ws")} "}}"')
            return self.base("object")
        # With properties given, only those properties: extra keys are where a small model rambles.
        ws = self.base("ws")
        kvs = []
        for name, sub in props.items():
            value = self._visit(sub, doc, f"{path}/properties/{name}")
            kvs.append((self.add(f'{literal(json.dumps(name, ensure_ascii=False))} {ws} ":" {ws} {value}'), name in required))
        # Properties in declared order; optional ones may be left out. rest[i][first]: members i.. .
        rest: dict[tuple[int, bool], str] = {}

        def members(i: int, first: bool) -> str:
            if i == len(kvs):
                return ""
            if (i, first) in rest:
                return rest[(i, first)]
            kv, req = kvs[i]
            item = kv if first else f'"," {ws} {kv}'
            after = members(i + 1, False)
            body = f"{item} {after}".strip()
            if not req:
                skip = members(i + 1, first)
                body = f"({body}) | ({skip})" if skip else f"({body})?"
            rest[(i, first)] = self.add(body) if body else ""
            return rest[(i, first)]

        inner = members(0, True)
        return self.add(f'"{{" {ws} {inner} {ws} "}}"' if inner else f'"{{" {ws} "}}"')

    def _array(self, schema: dict, doc: str, path: str) -> str:
        items = schema.get("items", {})
        if isinstance(items, list):
            raise self._fail(path, "has 'items' as a list (tuple validation), which is not supported")
        item = self._visit(items, doc, f"{path}/items")
        lo, hi = self._bounds(schema, "minItems", "maxItems", path)
        ws = self.base("ws")
        body = self._repeat(item, lo, hi, f'"," {ws}')
        return self.add(f'"[" {ws} {body} {ws} "]"')

    def _string(self, schema: dict, path: str) -> str:
        fmt = schema.get("format")
        if fmt is not None:
            if fmt not in _FORMATS:
                raise self._fail(path, f"has format {fmt!r}; supported formats: {', '.join(sorted(_FORMATS))}")
            if fmt == "uuid":
                h = self.base("hex")
                body = " \"-\" ".join(f"{h}{{{n}}}" for n in (8, 4, 4, 4, 12))
            elif fmt == "date-time":
                body = f'{self.base("date")} "T" {self.base("time")}'
            else:
                body = self.base(fmt)
            return self.add(f'"\\"" {body} "\\""')
        lo, hi = self._bounds(schema, "minLength", "maxLength", path)
        if lo == 0 and hi is None:
            return self.base("string")
        char = self.base("char")
        return self.add(f'"\\"" {char}{{{lo},{"" if hi is None else hi}}} "\\""')

    def _bounds(self, schema: dict, lo_key: str, hi_key: str, path: str) -> tuple[int, int | None]:
        lo, hi = schema.get(lo_key, 0), schema.get(hi_key)
        for key, value in ((lo_key, lo), (hi_key, hi)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise self._fail(path, f"has {key} {value!r}: it must be a non-negative integer")
            if value is not None and value > MAX_REPEAT:
                raise self._fail(path, f"has {key} {value}: a grammar can enforce at most {MAX_REPEAT}")
        if hi is not None and lo > hi:
            raise self._fail(path, f"has {lo_key} {lo} greater than {hi_key} {hi}")
        return lo, hi

    @staticmethod
    def _repeat(item: str, lo: int, hi: int | None, sep: str) -> str:
        """`item` lo..hi times with `sep` between (hi None: unbounded)."""
        if hi == 0:
            return ""
        if lo == 0:
            more = "" if hi is None else f"{{0,{hi - 1}}}"
            return f"({item} ({sep} {item}){more or '*'})?"
        tail = f"{{{lo - 1},{'' if hi is None else hi - 1}}}"
        return f"{item} ({sep} {item}){tail}"

    def _number(self, schema: dict, path: str, *, integer: bool) -> str:
        bounds = {k: schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
        for key, value in bounds.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise self._fail(path, f"has {key} {value!r}: it must be a number")
        if all(v is None for v in bounds.values()):
            return self.base("integer" if integer else "number")
        lo, lo_ex = integer_bound(bounds["minimum"], bounds["exclusiveMinimum"], upper=False)
        hi, hi_ex = integer_bound(bounds["maximum"], bounds["exclusiveMaximum"], upper=True)
        if integer:  # integers: an exclusive bound is the next integer in
            lo, lo_ex = (None if lo is None else lo + lo_ex), False
            hi, hi_ex = (None if hi is None else hi - hi_ex), False
        body = number_range(lo, lo_ex, hi, hi_ex, fractions=not integer)
        if not body:
            raise self._fail(path, "allows no number at all (its minimum is above its maximum)")
        return self.add(body)


# --- what requests ask for ----------------------------------------------------------------


def response_rule(g: Grammar, kind: str, schema: Any = None) -> str:
    """The rule for `response_format`: any JSON object, or JSON valid against `schema`."""
    if kind == "json_object":
        return g.base("object")
    return g.schema_rule(schema, doc_id="response", path="", param="response_format.json_schema.schema")


def response_format_grammar(kind: str, schema: Any = None) -> str:
    g = Grammar("response_format")
    return g.text(response_rule(g, kind, schema))
