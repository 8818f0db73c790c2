"""Schemas that loop, sprawl or nest: every one converts to a grammar llama.cpp takes, or is a clear 400."""

from __future__ import annotations

import ctypes
import functools
import json
import math
import threading
from typing import Any

import llama_cpp
import pytest
from wire import assert_error, assert_serves, chat_body, post_ok

from nomoat.config import embedded_model_path
from nomoat.core.gbnf import MAX_ALTERNATIVES, MAX_GRAMMAR_BYTES
from nomoat.core.structured import Grammar, SchemaError, response_rule
from nomoat.engine.model import install_llama_logging

SCHEMA_PARAM = "response_format.json_schema.schema"
LOOP = "leads back to itself"


def convert(schema: Any, kind: str = "json_schema", **limits: int) -> str:
    """The GBNF the server makes for a response_format schema; the conversion must end within a minute."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            g = Grammar("response_format", **limits)
            result["text"] = g.text(response_rule(g, kind, schema))
        except BaseException as exc:  # handed to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the conversion never ended"
    if "error" in result:
        raise result["error"]
    return result["text"]


def refused(schema: Any, **limits: int) -> str:
    """The message of the SchemaError a schema gets."""
    with pytest.raises(SchemaError) as exc:
        convert(schema, **limits)
    assert exc.value.param == SCHEMA_PARAM
    return str(exc.value)


@functools.lru_cache(maxsize=1)
def _vocab() -> Any:
    install_llama_logging()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), params)
    return model, llama_cpp.llama_model_get_vocab(model)


def accepts(gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the embedded model write exactly `text`, then stop."""
    _, vocab = _vocab()
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar"
    out = (llama_cpp.llama_token * (len(text) + 8))()
    n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), out, len(out), False, False)
    one = (llama_cpp.llama_token_data * 1)()
    arr = llama_cpp.llama_token_data_array(one, 1, -1, False)

    def allowed(token: int) -> bool:
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        arr.size, arr.selected, arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        return one[0].logit != -math.inf

    try:
        for token in out[:n]:
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(llama_cpp.llama_vocab_eos(vocab))  # the end is allowed only once the JSON is whole
    finally:
        llama_cpp.llama_sampler_free(sampler)


def defs(root: dict, **definitions: Any) -> dict:
    return {"$defs": definitions, **root}


def ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


# --- 1. loops ----------------------------------------------------------------------------------

LOOPS = {
    "allOf over a $ref to itself (the probe's)": defs({"allOf": [ref("a")]}, a=ref("a")),
    "a $ref to itself": defs(ref("a"), a=ref("a")),
    "two $refs to each other": defs(ref("a"), a=ref("b"), b=ref("a")),
    "the root's own $ref": {"$ref": "#"},
    "anyOf over a $ref to itself": defs(ref("a"), a={"anyOf": [ref("a"), {"type": "null"}]}),
    "oneOf over a $ref to itself": defs(ref("a"), a={"oneOf": [{"type": "null"}, ref("a")]}),
    "allOf in a definition, over itself": defs(ref("a"), a={"allOf": [ref("a"), {"type": "object"}]}),
    "allOf, anyOf, allOf back": defs({"allOf": [ref("b")]}, b={"anyOf": [{"allOf": [ref("b")]}, {"type": "null"}]}),
    "allOf and anyOf through each other": defs(ref("a"), a={"allOf": [ref("b")]}, b={"anyOf": [ref("a"), {"type": "string"}]}),
    "a type list over an anyOf loop": defs(ref("a"), a={"type": ["null", "string"], "anyOf": [ref("a")]}),
}


@pytest.mark.parametrize("schema", LOOPS.values(), ids=LOOPS.keys())
def test_a_schema_that_loops_before_writing_json_is_refused(schema):
    assert LOOP in refused(schema)


NODE = {"type": "object", "properties": {"value": {"type": "integer"},
                                         "children": {"type": "array", "items": ref("node"), "maxItems": 3}},
        "required": ["value", "children"]}
LINK = {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [ref("link"), {"type": "null"}]}},
        "required": ["v", "next"]}
RECURSIVE = {
    "a tree through array items": (defs(ref("node"), node=NODE),
                                   '{"value": 1, "children": [{"value": 2, "children": []}]}'),
    "a list through anyOf in properties": (defs(ref("link"), link=LINK), '{"v": 1, "next": {"v": 2, "next": null}}'),
    "the root through '#'": ({"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
                              "required": ["next"]}, '{"next": {"next": null}}'),
    "allOf over a recursive definition": (
        defs({"allOf": [ref("link"), {"properties": {"note": {"type": "string"}}}]}, link=LINK),
        '{"v": 1, "next": {"v": 2, "next": null}, "note": "x"}'),
    "allOf over the same definition twice (a diamond)": (
        defs({"type": "object", "allOf": [ref("b"), ref("c")]}, d={"properties": {"x": {"type": "integer"}}, "required": ["x"]},
             b={"allOf": [ref("d")]}, c={"allOf": [ref("d")]}), '{"x": 3}'),
    "the same $ref twice in an anyOf": (defs({"anyOf": [ref("s"), ref("s")]}, s={"type": "string", "maxLength": 3}), '"ab"'),
}


@pytest.mark.parametrize("schema, instance", RECURSIVE.values(), ids=RECURSIVE.keys())
def test_recursive_schemas_are_recursive_rules_llama_cpp_takes(schema, instance):
    gbnf = convert(schema)
    assert accepts(gbnf, instance)
    assert not accepts(gbnf, instance[:-1])


def test_anyof_siblings_copied_at_every_level_are_bounded_not_exponential():
    # Each level's anyOf visits its sibling `properties` once per branch: 2^25 visits unbounded.
    nested: dict = {"type": "string"}
    for _ in range(25):
        nested = {"anyOf": [{"type": "object"}, {"type": "object"}], "properties": {"x": nested}}
    assert "subschemas" in refused(nested)


def test_allof_over_30_diamonds_of_refs_merges_each_ref_once():
    definitions = {f"a{i}": {"allOf": [ref(f"a{i + 1}"), ref(f"a{i + 1}")]} for i in range(30)}
    assert accepts(convert(defs(ref("a0"), **definitions, a30={"type": "boolean"})), "true")


# --- 2. wide and deep -----------------------------------------------------------------------------


def test_an_object_of_1500_required_properties_converts():
    props = {f"p{i}": {"type": "integer", "maximum": 9} for i in range(1500)}
    gbnf = convert({"type": "object", "properties": props, "required": list(props)})
    assert accepts(gbnf, json.dumps({name: 1 for name in props}))


def test_an_object_of_1500_optional_properties_is_refused_by_the_size_limit():
    message = refused({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1500)}})
    assert f"more than {MAX_ALTERNATIVES} alternatives" in message


def _nest(leaf: dict, wrap: Any, levels: int = 100) -> dict:
    for _ in range(levels):
        leaf = wrap(leaf)
    return leaf


DEEP = {
    "properties": lambda s: {"type": "object", "properties": {"a": s}},
    "items": lambda s: {"type": "array", "items": s},
    "additionalProperties": lambda s: {"type": "object", "additionalProperties": s},
    "anyOf": lambda s: {"anyOf": [s, {"type": "null"}]},
    "allOf": lambda s: {"allOf": [s]},
    "type lists": lambda s: {"type": ["array", "null"], "items": s},
}


@pytest.mark.parametrize("wrap", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_refused_past_the_depth_limit(wrap):
    assert "nests deeper than" in refused(_nest({"type": "string"}, wrap))


def test_a_chain_of_100_refs_is_refused_past_the_depth_limit():
    chain = {f"a{i}": ref(f"a{i + 1}") for i in range(100)}
    assert "nests deeper than" in refused(defs(ref("a0"), **chain, a100={"type": "string"}))


def test_a_deeply_nested_const_is_refused_not_a_recursion_error():
    assert "nested too deeply" in refused({"const": _nest([], lambda v: [v], 5000)})


@pytest.mark.parametrize("parts, words", [
    ([{"properties": 5}, {"properties": {}}], "'properties' must be an object"),
    ([{"required": [["a"]]}, {"required": []}], "'required' must be a list"),
    ([{"const": _nest([], lambda v: [v], 5000)}, {"const": _nest([], lambda v: [v], 5000)}], "nested too deeply"),
    ([{"type": "string", "format": {"not": "hashable"}}], "has format"),
])
def test_allof_parts_of_the_wrong_shape_are_400s_not_crashes(parts, words):
    assert words in refused({"allOf": parts})


def test_bounds_past_a_grammar_numbers_digits():
    # An int too big for a float, and int64's maximum: both bound nothing a grammar writes.
    for maximum in (10**400, 2**63 - 1):
        assert accepts(convert({"type": "integer", "minimum": 0, "maximum": maximum}), "123")
    assert "more than 16 digits" in refused({"type": "integer", "minimum": 10**20})


def test_errors_about_many_keywords_stay_short():
    message = refused({"type": "object", **{f"x-{i}": 1 for i in range(100_000)}})
    assert "'x-0'" in message and "99995 more" in message and len(message) < 1000
    message = refused({"type": "object", "properties": {}, "required": [f"r{i}" for i in range(100_000)]})
    assert "99995 more" in message and len(message) < 1000


def test_a_type_list_of_100k_repeats_is_one_type():
    assert accepts(convert({"type": ["null"] * 100_000}), "null")


# --- 3. what a grammar may cost --------------------------------------------------------------------


def test_a_huge_enum_is_refused_with_the_limit_named():
    message = refused({"enum": [f"value {i}" for i in range(100_000)]})
    assert f"{MAX_ALTERNATIVES} alternatives" in message and "100000 values" in message


def test_the_limits_are_constructor_arguments():
    assert Grammar("x").max_alternatives == MAX_ALTERNATIVES and Grammar("x").max_bytes == MAX_GRAMMAR_BYTES
    four, five = {"enum": list("abcd")}, {"enum": list("abcde")}
    assert accepts(convert(four, max_alternatives=3), '"d"')  # 4 values: 3 alternatives
    assert "more than 3 alternatives" in refused(five, max_alternatives=3)
    wide = {"type": "object", "properties": {f"p{i}": {"type": "boolean"} for i in range(100)},
            "required": [f"p{i}" for i in range(100)]}
    assert "more than 2000 bytes" in refused(wide, max_bytes=2000)
    convert(wide)


def test_the_limit_is_on_the_whole_grammar_not_each_schema():
    g = Grammar("x")
    n = MAX_ALTERNATIVES // 2 + 2  # over half the alternatives each
    g.schema_rule({"enum": list(range(n))}, doc_id="tool0", path="", param="tools[0].function.parameters")
    with pytest.raises(SchemaError) as exc:
        g.schema_rule({"enum": list(range(n, 2 * n))}, doc_id="tool1", path="", param="tools[1].function.parameters")
    assert exc.value.param == "tools[1].function.parameters"


# --- 4. llama.cpp server's json_object with a schema --------------------------------------------------

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_object_with_a_schema_enforces_the_schema():
    free, strict = convert(None, "json_object"), convert(PERSON, "json_object")
    assert accepts(free, '{"colour": "red"}')
    assert not accepts(strict, '{"colour": "red"}')
    assert accepts(strict, '{"name": "Ann", "age": 30}')
    assert strict == convert(PERSON)


def test_json_object_schema_errors_name_its_field():
    g = Grammar("response_format")
    with pytest.raises(SchemaError) as exc:
        response_rule(g, "json_object", {"type": "string", "pattern": "a+"})
    assert exc.value.param == "response_format.schema"


# --- through HTTP: a 400, and the server keeps answering -----------------------------------------------


def _schema_chat(schema: dict) -> dict:
    return chat_body("Answer as JSON.", max_tokens=5,
                     response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


def test_http_a_looping_schema_is_a_400(client):
    err = assert_error(client.post("/v1/chat/completions", json=_schema_chat(LOOPS["allOf over a $ref to itself (the probe's)"])),
                       400, code="unsupported_schema", param=SCHEMA_PARAM)
    assert LOOP in err["message"]
    assert_serves(client)
    post_ok(client, "/v1/chat/completions", _schema_chat(RECURSIVE["a tree through array items"][0]))


def test_http_wide_and_deep_schemas(client):
    props = {f"p{i}": {"type": "string"} for i in range(1500)}
    err = assert_error(client.post("/v1/chat/completions", json=_schema_chat({"type": "object", "properties": props})),
                       400, code="unsupported_schema", param=SCHEMA_PARAM)
    assert "alternatives" in err["message"]
    # 100 nested schemas are 200 levels of JSON: the body's own nesting limit refuses them first.
    err = assert_error(client.post("/v1/chat/completions", json=_schema_chat(_nest({"type": "string"}, DEEP["items"]))),
                       400)
    assert "deeper than" in err["message"]
    body = post_ok(client, "/v1/chat/completions", _schema_chat({"type": "object", "properties": props, "required": list(props)}))
    assert body["choices"][0]["message"]["content"].startswith("{")
    assert_serves(client)


def test_http_a_huge_enum_is_a_400(fake):
    """Refused while the request is read, before any engine (in process, the fake engine)."""
    client = fake.client
    err = assert_error(client.post("/v1/chat/completions", json=_schema_chat({"enum": [f"value {i}" for i in range(10_000)]})),
                       400, code="unsupported_schema", param=SCHEMA_PARAM)
    assert f"more than {MAX_ALTERNATIVES} alternatives" in err["message"]
    assert_serves(client)
