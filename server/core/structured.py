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
from typing import Any

from .gbnf import LIMIT_WHY, MAX_ALTERNATIVES, MAX_GRAMMAR_BYTES, GrammarRules, SchemaError, literal, repeat
from .scalars import count_bounds, number_rule, string_rule

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

# Deepest schema nesting converted (each level is a few Python calls; real schemas stay far below).
MAX_DEPTH = 64
# Subschemas a conversion may visit, copies included: anyOf/oneOf visit their siblings once per
# branch and allOf copies its $refs, so nested ones would take exponential time. The conversion
# runs on the event loop: 10k visits are well under a second.
MAX_VISITS = 10_000


class Grammar(GrammarRules):
    """Builds one GBNF grammar from any number of schemas; `root` is set by the caller.

    A schema whose grammar would pass `max_bytes` of GBNF or `max_alternatives` alternatives
    (`|` branches, all rules together) is refused with a SchemaError, as is one that loops,
    nests past MAX_DEPTH or takes more than MAX_VISITS subschemas to convert.
    """

    def __init__(self, param: str, *, max_bytes: int = MAX_GRAMMAR_BYTES,
                 max_alternatives: int = MAX_ALTERNATIVES) -> None:
        super().__init__(param, max_bytes=max_bytes, max_alternatives=max_alternatives)
        self._docs: dict[str, Any] = {}
        self._refs: dict[tuple[str, str], str] = {}
        # $refs being converted with no JSON written since they were entered: meeting one of
        # them again is a loop that never writes anything (left recursion), not a recursive schema.
        self._bare: set[tuple[str, str]] = set()
        self._depth = 0
        self._visits = 0

    # --- public -----------------------------------------------------------------------

    def schema_rule(self, schema: Any, *, doc_id: str, path: str, param: str | None = None) -> str:
        """The name of a rule matching JSON valid against `schema` (its `$ref`s resolve in itself)."""
        if param is not None:
            self.param = param
        self._docs[doc_id] = schema
        return self._visit(schema, doc_id, path)

    def property_rule(self, schema: Any, *, doc_id: str, path: str) -> str:
        """A rule for a part of a document schema_rule already added (one property's value): its `$ref`s
        resolve in that document."""
        return self._inside(schema, doc_id, path)

    # --- schemas ------------------------------------------------------------------------

    def _enter(self, path: str) -> None:
        """One more level and one more visit, within MAX_DEPTH and MAX_VISITS (the caller steps back)."""
        if self._depth >= MAX_DEPTH:
            raise self.fail(path, f"nests deeper than {MAX_DEPTH} levels")
        self._visits += 1
        if self._visits > MAX_VISITS:
            raise self.fail(path, f"takes more than {MAX_VISITS} subschemas to convert, counting the copies "
                                  "anyOf, oneOf and allOf make of their siblings and $refs")
        self._depth += 1

    def _visit(self, schema: Any, doc: str, path: str) -> str:
        self._enter(path)
        try:
            return self._visit_one(schema, doc, path)
        finally:
            self._depth -= 1

    def _inside(self, schema: Any, doc: str, path: str) -> str:
        """Visit a schema whose JSON comes after some JSON is written (a property, an item)."""
        bare, self._bare = self._bare, set()
        try:
            return self._visit(schema, doc, path)
        finally:
            self._bare = bare

    def _json(self, value: Any, path: str) -> str:
        try:
            return literal(json.dumps(value, ensure_ascii=False))
        except RecursionError:
            raise self.fail(path, "has a value nested too deeply to write") from None

    def _visit_one(self, schema: Any, doc: str, path: str) -> str:
        if schema is True or schema == {}:
            return self.base("value")
        if not isinstance(schema, dict):
            raise self.fail(path, f"must be an object, got {type(schema).__name__}")
        unknown = [k for k in schema if k not in _KNOWN and k not in _ANNOTATIONS]
        if unknown:
            raise self.fail(path, f"uses {_some(unknown)}, which nomoat cannot enforce "
                                  f"with a grammar (supported: {', '.join(sorted(_KNOWN))})")
        if "$ref" in schema:
            return self._ref(schema, doc, path)
        if "allOf" in schema:
            return self._all_of(schema, doc, path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise self.fail(path, f"'{key}' must be a non-empty list")
                rest = {k: v for k, v in schema.items() if k != key}
                names = [self._visit({**rest, **alt} if isinstance(alt, dict) else alt, doc, f"{path}/{key}/{i}")
                         for i, alt in enumerate(alts)]
                return self.add(" | ".join(names))
        if "const" in schema:
            return self.add(self._json(schema["const"], path))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail(path, "'enum' must be a non-empty list")
            if len(values) - 1 > self.max_alternatives:  # refused before spelling out a huge rule
                raise self.fail(path, f"has an enum of {len(values)} values, which needs more than "
                                      f"{self.max_alternatives} alternatives, {LIMIT_WHY}")
            return self.add(" | ".join(self._json(v, path) for v in values))
        types = schema.get("type")
        if types is None:
            types = self._infer_type(schema)
            if types is None:
                return self.base("value")
        if isinstance(types, list):
            if not types or not all(isinstance(t, str) for t in types):
                raise self.fail(path, "'type' must be a type name or a non-empty list of them")
            return self.add(" | ".join(self._typed(t, schema, doc, path) for t in dict.fromkeys(types)))
        return self._typed(types, schema, doc, path)

    @staticmethod
    def _infer_type(schema: dict[str, Any]) -> str | None:
        for type_ in ("object", "array", "string", "number"):
            if any(k in schema for k in _BY_TYPE[type_]):
                return type_
        return None

    def _typed(self, type_: Any, schema: dict[str, Any], doc: str, path: str) -> str:
        if not isinstance(type_, str) or type_ not in _BY_TYPE:
            raise self.fail(path, f"has unknown type {type_!r:.40}")
        if type_ == "object":
            return self._object(schema, doc, path)
        if type_ == "array":
            return self._array(schema, doc, path)
        if type_ == "string":
            return string_rule(self, schema, path)
        if type_ in ("integer", "number"):
            return number_rule(self, schema, path, integer=type_ == "integer")
        return self.base(type_)

    def _ref(self, schema: dict[str, Any], doc: str, path: str) -> str:
        ref = schema["$ref"]
        key = (doc, str(ref))  # a ref that is no string fails in _resolve
        if key in self._bare:
            raise self._loop(path, ref)
        if key in self._refs:  # done, or being done with JSON written since: a recursive schema
            return self._refs[key]
        target = self._resolve(ref, doc, path)
        # Name the rule before visiting it, so recursive schemas refer to themselves.
        name = self.new_name("ref")
        self._refs[key] = name
        self.rules[name] = ""  # placeholder: keeps the slot and the order
        self._bare.add(key)
        try:
            body = self._visit(target, doc, ref)
        finally:
            self._bare.discard(key)
        self.define(name, body)
        return name

    def _loop(self, path: str, ref: Any) -> SchemaError:
        return self.fail(path, f"has $ref {ref!r}, which leads back to itself through $ref, allOf, anyOf or "
                               "oneOf alone; a schema may refer to itself only inside an object's properties "
                               "or an array's items")

    def _all_of(self, schema: dict[str, Any], doc: str, path: str) -> str:
        """allOf: its parts merged into one schema, with the $refs they follow bare until JSON is written."""
        followed: list[str] = []
        merged = self._merge_all_of(self._all_of_parts(schema, doc, path, (), followed))
        added = {(doc, ref) for ref in followed} - self._bare
        self._bare |= added
        try:
            return self._visit(merged, doc, path)
        finally:
            self._bare -= added

    def _merge_all_of(self, parts: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for part, where in parts:
            for key, value in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
                elif key in merged and key not in _ANNOTATIONS and self._differ(merged[key], value, where):
                    raise self.fail(where, f"combines two different {key!r}: allOf is supported "
                                           "only to merge objects' properties")
                else:
                    merged[key] = value
        return merged

    def _differ(self, a: Any, b: Any, path: str) -> bool:
        try:
            differ: bool = a != b
        except RecursionError:
            raise self.fail(path, "has a value nested too deeply to compare") from None
        return differ

    def _all_of_parts(self, schema: Any, doc: str, path: str, refs: tuple[str, ...],
                      followed: list[str]) -> list[tuple[dict[str, Any], str]]:
        """The schemas an allOf merges, its own keys first, with the $refs and allOfs in it resolved.

        `refs` are the $refs followed to get here: meeting one again is a loop. Every $ref
        followed is added to `followed`.
        """
        if not isinstance(schema, dict):
            raise self.fail(path, "must be an object")
        if not isinstance(schema.get("properties", {}), dict):
            raise self.fail(path, "'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise self.fail(path, "'required' must be a list of property names")
        self._enter(path)
        try:
            parts = [({k: v for k, v in schema.items() if k not in ("allOf", "$ref")}, path)]
            if "$ref" in schema:
                ref = schema["$ref"]
                target = self._resolve(ref, doc, path)  # checks that ref is a string
                if ref in refs or (doc, ref) in self._bare:
                    raise self._loop(path, ref)
                if ref not in followed:  # merging a part twice changes nothing: a diamond stays linear
                    followed.append(ref)
                    parts += self._all_of_parts(target, doc, ref, (*refs, ref), followed)
            if "allOf" in schema:
                subs = schema["allOf"]
                if not isinstance(subs, list) or not subs:
                    raise self.fail(path, "'allOf' must be a non-empty list")
                for i, sub in enumerate(subs):
                    parts += self._all_of_parts(sub, doc, f"{path}/allOf/{i}", refs, followed)
            return parts
        finally:
            self._depth -= 1

    def _resolve(self, ref: Any, doc: str, path: str) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.fail(path, f"has $ref {ref!r}: only local references ('#/$defs/...') are supported")
        target: Any = self._docs[doc]
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")  # JSON pointer escapes
            if not isinstance(target, dict) or part not in target:
                raise self.fail(path, f"has $ref {ref!r}, which points nowhere in the schema")
            target = target[part]
        return target

    def _object(self, schema: dict[str, Any], doc: str, path: str) -> str:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise self.fail(path, "'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(not isinstance(r, str) for r in required):
            raise self.fail(path, "'required' must be a list of property names")
        missing = [r for r in required if r not in props]
        if missing:
            raise self.fail(path, f"requires {_some(missing)}, which 'properties' does not define")
        extra = schema.get("additionalProperties")
        if not props:
            if isinstance(extra, dict) and extra:
                value = self._inside(extra, doc, f"{path}/additionalProperties")
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
        required = set(required)
        for name, sub in props.items():
            value = self._inside(sub, doc, f"{path}/properties/{name}")
            kvs.append((self.add(f'{self._json(name, path)} {ws} ":" {ws} {value}'), name in required))
        inner = self._members(kvs, ws)
        return self.add(f'"{{" {ws} {inner} {ws} "}}"' if inner else f'"{{" {ws} "}}"')

    def _members(self, kvs: list[tuple[str, bool]], ws: str) -> str:
        """An object's members in declared order, optional ones left out or not ("" for none).

        The rule for members i.. depends on whether member i is the first written (no comma
        before it); built from the last member back, as a loop: a thousand properties would
        pass Python's recursion limit.
        """
        needed = {(0, True)}
        for i, (_, req) in enumerate(kvs):
            for first in (True, False):
                if (i, first) in needed:
                    needed |= {(i + 1, False)} | (set() if req else {(i + 1, first)})
        rest: dict[tuple[int, bool], str] = {(len(kvs), True): "", (len(kvs), False): ""}
        for i in range(len(kvs) - 1, -1, -1):
            kv, req = kvs[i]
            for first in (True, False):
                if (i, first) not in needed:
                    continue
                item = kv if first else f'"," {ws} {kv}'
                body = f"{item} {rest[(i + 1, False)]}".strip()
                if not req:
                    skip = rest[(i + 1, first)]
                    body = f"({body}) | ({skip})" if skip else f"({body})?"
                rest[(i, first)] = self.add(body)
        return rest[(0, True)]

    def _array(self, schema: dict[str, Any], doc: str, path: str) -> str:
        items = schema.get("items", {})
        if isinstance(items, list):
            raise self.fail(path, "has 'items' as a list (tuple validation), which is not supported")
        item = self._inside(items, doc, f"{path}/items")
        lo, hi = count_bounds(self, schema, "minItems", "maxItems", path)
        ws = self.base("ws")
        body = repeat(item, lo, hi, f'"," {ws}')
        return self.add(f'"[" {ws} {body} {ws} "]"')


def _some(names: list[str]) -> str:
    """The first few names, quoted, for an error message that stays short."""
    shown = ", ".join(repr(n)[:60] for n in names[:5])
    return shown if len(names) <= 5 else f"{shown} and {len(names) - 5} more"


# --- what requests ask for ----------------------------------------------------------------


def response_rule(g: Grammar, kind: str, schema: Any = None, param: str | None = None) -> str:
    """The rule for `response_format`: JSON valid against `schema` when there is one, else any JSON object.

    `json_object` with a `schema` is llama.cpp server's form of `json_schema`: enforced the same way.
    `param` names the schema's field in errors (default: chat's `response_format`).
    """
    if kind == "json_object" and schema is None:
        return g.base("object")
    if param is None:
        param = "response_format.schema" if kind == "json_object" else "response_format.json_schema.schema"
    return g.schema_rule(schema, doc_id="response", path="", param=param)
