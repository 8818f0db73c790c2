"""`response_format`: JSON enforced by a grammar, on the base model and an adapter, streamed or not."""

from __future__ import annotations

import asyncio
import json
import re
from enum import StrEnum
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest
from clients_fixtures import CLIENT_MODELS

from nomoat.core.numbers import number_range
from nomoat.core.structured import Grammar, response_rule
from nomoat.errors import InvalidRequestError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
    },
    "required": ["name", "age", "mood", "tags"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON."}]


def fmt(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def sdk(clients_server):
    with openai.OpenAI(base_url=clients_server.base_url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


# --- the real model -----------------------------------------------------------------------


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_json_schema_output_validates(sdk, model):
    r = sdk.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=120, response_format=fmt(PERSON))
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


@pytest.mark.parametrize("model", CLIENT_MODELS)
def test_json_schema_streamed_validates_and_equals_the_whole_answer(sdk, model):
    kw = dict(model=model, messages=ASK, temperature=0, max_tokens=120, response_format=fmt(PERSON))
    whole = sdk.chat.completions.create(**kw).choices[0].message.content
    chunks = list(sdk.chat.completions.create(stream=True, **kw))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(streamed), PERSON)
    assert streamed == whole


def test_bounds_hold_when_sampling_freely(sdk):
    # Hot sampling wanders: every one of the choices still keeps to the schema's bounds.
    r = sdk.chat.completions.create(model="smollm2-135m", messages=ASK, temperature=1.3, seed=7, n=6,
                                    max_tokens=120, response_format=fmt(PERSON))
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        person = json.loads(choice.message.content)
        jsonschema.validate(person, PERSON)


class Mood(StrEnum):
    happy = "happy"
    calm = "calm"


class Pet(pydantic.BaseModel):
    kind: Literal["cat", "dog"]
    age: int = pydantic.Field(ge=0, le=30)


class Owner(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=10)
    mood: Mood
    pet: Pet
    nickname: str | None = pydantic.Field(None, max_length=8)


def test_sdk_parse_with_a_pydantic_model_sync_and_async(sdk, clients_server):
    # The SDK's parse() sends a strict json_schema ($defs, $ref, enums, anyOf with null) and
    # raises on invalid JSON or finish_reason "length".
    ask = [{"role": "user", "content": "Make up a pet owner."}]
    parsed = sdk.chat.completions.parse(model="tuned", messages=ask, temperature=0, max_tokens=120,
                                        response_format=Owner).choices[0].message.parsed
    assert isinstance(parsed, Owner)

    async def run():
        async with openai.AsyncOpenAI(base_url=clients_server.base_url + "/v1", api_key="x", max_retries=0) as a:
            r = await a.chat.completions.parse(model="smollm2-135m", messages=ask, temperature=0, max_tokens=120,
                                               response_format=Owner)
            return r.choices[0].message.parsed

    assert isinstance(asyncio.run(run()), Owner)


def test_json_object_mode(sdk):
    ask = [{"role": "user", "content": "Give a JSON object with the name and age of a person."}]
    r = sdk.chat.completions.create(model="tuned", messages=ask, temperature=0, max_tokens=60,
                                    response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_without_response_format_the_same_prompt_is_not_json(sdk):
    # The test above proves something only if the model does not write JSON here by itself.
    r = sdk.chat.completions.create(model="smollm2-135m", messages=ASK, temperature=0, max_tokens=60)
    with pytest.raises(json.JSONDecodeError):
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


@pytest.mark.parametrize("schema, names", [
    ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems'"),
    ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}}, "format 'email'"),
    ({"type": "object", "properties": {"x": {"not": {"type": "null"}}}}, "'not'"),
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "allows no number"),
    ({"type": "string", "maxLength": 10**6}, "at most"),
    # Nesting through $refs is shallow JSON, so the schema converter's own bound refuses it (a schema nested in
    # the body itself meets the rule for every body first: tests/test_request_json.py).
    ({"$defs": {f"d{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}}} for i in range(80)}
      | {"d80": {"type": "string"}}, "$ref": "#/$defs/d0"}, "nests deeper than 64 levels"),
])
def test_unsupported_schema_is_a_clear_400_and_the_server_keeps_serving(fake, schema, names):
    """Refused while the request is read (in process, the fake engine): before any grammar reaches llama.cpp."""
    c = fake.client
    r = c.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, "response_format": fmt(schema)})
    assert r.status_code == 400
    err = r.json()["error"]
    assert names in err["message"]
    assert err["param"] == "response_format.json_schema.schema" and err["code"] == "unsupported_schema"
    assert not fake.engine.submitted
    assert c.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 3}).status_code == 200


def test_schemas_llama_cpp_refuses_and_absurd_nesting_are_400_too(fake):
    """Refused while the request is read, like the schemas above (in process, the fake engine)."""
    c = fake.client
    only_refs = {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
    r = c.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 5, "response_format": fmt(only_refs)})
    assert r.status_code == 400 and "$ref" in r.json()["error"]["message"]
    deep = '{"messages": [{"role": "user", "content": "hi"}], "response_format": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = c.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "deeper than the limit of 64 levels" in r.json()["error"]["message"]
    assert c.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 3}).status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"type": "json_schema"}, "response_format"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}}, "response_format.json_schema.schema"),
])
def test_malformed_response_format_is_400(fake, body, param):
    r = fake.client.post("/v1/chat/completions",
                         json={"messages": ASK, "max_tokens": 5, "response_format": body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_text_format_changes_nothing(sdk):
    kw = dict(model="smollm2-135m", messages=ASK, temperature=0, max_tokens=10)
    assert (sdk.chat.completions.create(response_format={"type": "text"}, **kw).choices[0].message.content
            == sdk.chat.completions.create(**kw).choices[0].message.content)


# --- the grammar, without the model ----------------------------------------------------------


def _regex(gbnf: str) -> str:
    """A Python regex for a GBNF expression made of literals, classes, groups and repetitions."""
    out, i = [], 0
    while i < len(gbnf):
        c = gbnf[i]
        if c == '"':
            j, lit = i + 1, ""
            while gbnf[j] != '"':
                lit += gbnf[j + 1] if gbnf[j] == "\\" else gbnf[j]
                j += 2 if gbnf[j] == "\\" else 1
            out.append(re.escape(lit))
            i = j + 1
        elif c == "[":
            j = gbnf.index("]", i)
            out.append(gbnf[i:j + 1])
            i = j + 1
        else:
            out.append("" if c == " " else c)
            i += 1
    return "".join(out)


@pytest.mark.parametrize("fractions", [False, True])
def test_number_ranges_accept_exactly_the_numbers_in_range(fractions):
    bounds = [None, -1000, -101, -7, -1, 0, 1, 9, 10, 99, 100, 123, 1000]
    values = [str(n) for n in range(-1200, 1200)]
    if fractions:
        values += [f"{n}{f}" for n in range(-130, 130) for f in (".5", ".05", ".9")]
    for lo in bounds:
        for hi in bounds:
            if lo is not None and hi is not None and lo > hi:
                continue
            for lo_ex in (False, True):
                for hi_ex in (False, True):
                    expr = number_range(lo, lo_ex, hi, hi_ex, fractions=fractions)
                    pattern = re.compile(f"(?:{_regex(expr)})\\Z") if expr else None
                    for v in values:
                        x = float(v)
                        inside = ((lo is None or (x > lo if lo_ex else x >= lo))
                                  and (hi is None or (x < hi if hi_ex else x <= hi)))
                        matched = bool(pattern and pattern.match(v))
                        assert matched == inside, (lo, lo_ex, hi, hi_ex, v, expr)


def grammar_text(kind: str, schema: dict | None = None) -> str:
    """The GBNF for a response_format, as the server builds it."""
    g = Grammar("response_format")
    return g.text(response_rule(g, kind, schema))


def test_pydantic_schemas_convert():
    for model in (Owner, Pet):
        assert "root ::=" in grammar_text("json_schema", model.model_json_schema())


def test_recursive_schema_converts():
    node = {"$defs": {"N": {"type": "object", "properties": {"v": {"type": "integer"},
                                                              "next": {"anyOf": [{"$ref": "#/$defs/N"}, {"type": "null"}]}},
                            "required": ["v", "next"]}}, "$ref": "#/$defs/N"}
    grammar = grammar_text("json_schema", node)
    ref = re.search(r"^(ref\d+) ::=", grammar, re.M).group(1)
    assert grammar.count(ref) >= 3  # root, its definition, and the recursive use


def test_errors_name_the_field_they_come_from():
    g = Grammar("tools[2].function.parameters")
    with pytest.raises(InvalidRequestError) as exc:
        g.schema_rule({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}, doc_id="d", path="")
    assert exc.value.param == "tools[2].function.parameters" and "/properties/a" in str(exc.value)
