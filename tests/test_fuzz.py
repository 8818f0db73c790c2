"""Property-based fuzzing of every route, in process over the fake engine: valid and invalid bodies, raw
bytes, random paths and queries. Never a 5xx, always OpenAI's error shape, and the app answers afterwards.

Bodies are drawn from the request models' own JSON schemas (the ones GET /openapi.json publishes), so a
new field is fuzzed the day it is declared. Runs derandomized: the same examples on every run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel
from support.inprocess import MODEL, FakeServer

from nomoat.http.openapi import REQUEST_MODELS
from nomoat.wire.body import MAX_JSON_DEPTH
from nomoat.wire.routes import ENDPOINTS, match

# CI runs the same few examples every time (a flaky test is a broken one); a hunt for bugs runs many,
# random ones: NOMOAT_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py.
DEEP_EXAMPLES = int(os.environ.get("NOMOAT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP_EXAMPLES or 40, derandomize=not DEEP_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])
JSON_HEADERS = {"content-type": "application/json"}
# What a successful non-stream answer of each POST route holds in `object`.
OBJECTS = {"chat": "chat.completion", "completions": "text_completion", "embeddings": "list", "load_adapter": "adapter",
           "create_response": "response"}
TYPES = {"messages": "message"}  # the same, for Anthropic's answers (`type`)
# Statuses a body that the schema accepts may still get: refused for meaning (400: top_logprobs without
# logprobs, 404: no such adapter, 403: a path outside the adapter directories, 409: unloading a pinned
# model...), never a 5xx.
SERVABLE_STATUSES = {200, 201, 400, 403, 404, 409, 413, 422, 429}


# --- strategies ----------------------------------------------------------------------------------

def servable_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema, narrowed so a drawn body routes to the fake model and stays small and fast."""
    schema = model.model_json_schema(mode="validation")
    props = schema["properties"]
    if "model" in props:
        props["model"] = {"const": MODEL}
        schema["required"] = sorted({*schema.get("required", []), "model"})
    for key, cap in (("n", 2), ("max_tokens", 8), ("max_completion_tokens", 8), ("best_of", 2)):
        if key in props:
            props[key] = {"type": "integer", "minimum": 1, "maximum": cap}
    # Typed `Any` in the models, these are refused whenever present: drawn, they would refuse most
    # examples before anything else is checked. The junk strategies below still send them.
    for key in ("functions", "function_call", "lora"):
        if key in props:
            props[key] = {"type": "null"}
    if "logit_bias" in props:
        props["logit_bias"] = {"type": "object", "propertyNames": {"pattern": "^[0-9]{1,4}$"},
                               "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}
    return schema


# Numbers that break code written for sane ones: huge, negative, past 64 bits, not finite (Python's
# json accepts the NaN and Infinity literals), subnormal.
EDGE_NUMBERS = st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 1e308, -1e308,
                                5e-324, math.nan, math.inf, -math.inf, 0.5, -0.0, 4096, 8192])
# Strings that break code written for ASCII: lone surrogates, NUL, RTL marks, emoji, markup of the
# tool and template formats the server parses.
EDGE_STRINGS = st.sampled_from(["", "\x00", "\ud800", "a\udfff", "\u202e", "🦙" * 3, "<tool_call>", "</tool_call>",
                                "{{ raise_exception('x') }}", "SAY:<tool_call>\n{\"name\": 1}\n</tool_call>",
                                "data: [DONE]", MODEL, "text", "function", "json_schema", "user", "..", "/"])
JUNK_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats() | EDGE_NUMBERS | EDGE_STRINGS
               | st.text(max_size=12))
JUNK = st.recursive(JUNK_LEAVES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6) | EDGE_STRINGS, inner, max_size=3), max_leaves=8)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def bodies(model: type[BaseModel], junk: bool) -> st.SearchStrategy[Any]:
    """Bodies drawn from the model's JSON schema: valid ones, or (junk) near-valid ones whose every part
    may be junk instead: the model's own keys with wrong types, missing required fields, extra keys.

    The walk over objects, arrays and unions is ours and builds the strategy once; hypothesis-jsonschema
    draws the leaves. Its own object strategy re-merges schemas on every draw: ~0.5 s per chat body.
    """
    schema = servable_schema(model) if not junk else model.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    built: dict[str, st.SearchStrategy[Any]] = {}

    def walk(node: dict[str, Any]) -> st.SearchStrategy[Any]:
        strategy = shape(node)
        return strategy | JUNK if junk else strategy

    def shape(node: dict[str, Any]) -> st.SearchStrategy[Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in built:
                built[name] = st.deferred(lambda: walk(defs[name]))
            return built[name]
        if "anyOf" in node or "oneOf" in node:  # oneOf: a discriminated union (content blocks)
            return st.one_of([walk(branch) for branch in node.get("anyOf", node.get("oneOf"))])
        if node.get("type") == "object" and "properties" in node:
            fields = {key: walk(sub) for key, sub in node["properties"].items()}
            required = {key: fields.pop(key) for key in node.get("required", []) if not junk}
            extra = {"extra_field": JUNK} if junk else {}
            return st.fixed_dictionaries(required, optional={**fields, **extra})
        if node.get("type") == "object" or node == {}:
            values = node.get("additionalProperties", True)
            keys = from_schema({"type": "string", **node.get("propertyNames", {})})
            return JSON_VALUES if node == {} else st.dictionaries(
                keys, JSON_VALUES if values is True else walk(values), max_size=3)
        if node.get("type") == "array" and "items" in node:
            return st.lists(walk(node["items"]), min_size=node.get("minItems", 0),
                            max_size=min(node.get("maxItems", 3), 3))
        return from_schema(node)

    return walk(schema)


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it: NaN and Infinity literals, lone surrogates escaped."""
    return json.dumps(body, allow_nan=True).encode()


POST_ENDPOINTS = {endpoint.name: endpoint.paths() for endpoint in ENDPOINTS if endpoint.method == "POST"}


VALID_BODIES = {name: bodies(model, junk=False) for name, model in REQUEST_MODELS.items()}
# The request models of routes the in-process app serves: POST /models/pull needs a reloader, which only the daemon
# builds (it is a 404 saying it is off here); tests/test_pull_service.py sends it bodies through a real server.
SERVED_HERE = sorted(set(REQUEST_MODELS) - {"pull_model"})
NEAR_VALID_BODIES = {name: bodies(model, junk=True) for name, model in REQUEST_MODELS.items()}


# --- checks --------------------------------------------------------------------------------------

def check_answer(r: Any, name: str) -> None:
    """Whatever the request: no 5xx; an error has its route's dialect's shape (OpenAI's, or Anthropic's on
    /v1/messages); a success is its route's object or a stream that ends as its protocol ends one."""
    assert r.status_code < 500, f"{r.status_code}: {r.text[:2000]}"
    anthropic = match(r.request.method, r.request.url.path).dialect == "anthropic"
    if r.status_code >= 400:
        body = r.json()
        error = body["error"]
        if anthropic:  # details: the code a client falls back on (thread_unsupported_request)
            assert body["type"] == "error" and set(error) - {"details"} == {"type", "message"}, body
        else:
            assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
        assert events, r.text
        if anthropic:
            assert json.loads(events[-1])["type"] in ("message_stop", "error"), events[-1]
        else:
            assert events[-1] == "[DONE]" or "error" in json.loads(events[-1]), events[-1]
        return
    if name in OBJECTS:
        assert r.json()["object"] == OBJECTS[name], r.text[:2000]
    if name in TYPES:
        assert r.json()["type"] == TYPES[name], r.text[:2000]


def check_still_serving(fake: FakeServer) -> None:
    assert fake.client.get("/health").status_code == 200
    assert fake.engine.outstanding == 0, "a generation outlived its request"


@pytest.fixture()
def app(fake_factory: Any, tmp_path: Path) -> Iterator[FakeServer]:
    """The app with an (empty) adapter directory, so POST /v1/adapters reaches its path confinement, and
    its own state directory for the responses it stores."""
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    yield fake_factory(adapter_dirs=[adapters], max_body_bytes=64 * 1024, state_dir=tmp_path / "state")


# --- properties ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SERVED_HERE)
def test_bodies_the_schema_accepts_are_served_or_refused_cleanly(app: FakeServer, name: str) -> None:
    @FUZZ
    @given(path=st.sampled_from(POST_ENDPOINTS[name]), body=VALID_BODIES[name])
    def run(path: str, body: dict[str, Any]) -> None:
        r = app.client.post(path, content=encode(body), headers=JSON_HEADERS)
        check_answer(r, name)
        assert r.status_code in SERVABLE_STATUSES, r.text[:2000]
        check_still_serving(app)

    run()


CONTENT_TYPES = st.sampled_from(["application/json", "application/json", "text/plain", "",
                                 "application/x-www-form-urlencoded", "application/json; charset=latin-1"])


@pytest.mark.parametrize("name", sorted(POST_ENDPOINTS))
def test_junk_bodies_are_refused_cleanly(app: FakeServer, name: str) -> None:
    near_valid = NEAR_VALID_BODIES.get(name, JUNK)

    @FUZZ
    @given(path=st.sampled_from(POST_ENDPOINTS[name]), content_type=CONTENT_TYPES,
           body=near_valid.map(encode) | JUNK.map(encode) | st.binary(max_size=64))
    def run(path: str, content_type: str, body: bytes) -> None:
        check_answer(app.client.post(path, content=body, headers={"content-type": content_type}), name)
        check_still_serving(app)

    run()


# What every route refuses alike, wherever in the body it is (wire/body.py): numbers JSON has not, and nesting
# past the bound (a Responses item's arguments 400-900 deep was a 500).
NOT_SERVABLE_JSON = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]) | st.integers(
    MAX_JSON_DEPTH + 1, 3000).map(lambda depth: "[" * depth + "]" * depth)
SPOT = "@not-servable@"


def containers(value: Any) -> list[Any]:
    """Every object and array in a body, the body first."""
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in containers(v))]
    return []


@pytest.mark.parametrize("name", SERVED_HERE)
def test_non_finite_numbers_and_deep_nesting_anywhere_are_the_same_400(app: FakeServer, name: str) -> None:
    @FUZZ
    @given(path=st.sampled_from(POST_ENDPOINTS[name]), body=VALID_BODIES[name], raw=NOT_SERVABLE_JSON,
           data=st.data())
    def run(path: str, body: dict[str, Any], raw: str, data: st.DataObject) -> None:
        spot = data.draw(st.sampled_from(containers(body)))
        if isinstance(spot, dict):
            spot[data.draw(st.text(min_size=1, max_size=6))] = SPOT
        else:
            spot.insert(data.draw(st.integers(0, len(spot))), SPOT)
        text = encode(body).replace(json.dumps(SPOT).encode(), raw.encode())
        r = app.client.post(path, content=text, headers=JSON_HEADERS)
        check_answer(r, name)
        assert r.status_code == 400, r.text[:2000]
        message = r.json()["error"]["message"]
        assert "deeper than the limit of 64 levels" in message if raw.startswith("[") else raw in message, message
        check_still_serving(app)

    run()


GET_ROUTES = [path for endpoint in ENDPOINTS if endpoint.method in ("GET", "DELETE") for path in endpoint.paths()]
PATH_TEXT = st.text(max_size=16) | EDGE_STRINGS


@FUZZ
@given(template=st.sampled_from(GET_ROUTES), param=PATH_TEXT, raw=st.booleans(),
       query=st.dictionaries(st.text(max_size=6) | EDGE_STRINGS, PATH_TEXT, max_size=3))
def test_get_and_delete_routes_with_random_params_and_queries(app: FakeServer, template: str, param: str,
                                                              raw: bool, query: dict[str, str]) -> None:
    method = next(e.method for e in ENDPOINTS if template in e.paths())
    # Raw: the param as a client that does not escape sends it (slashes, dots, percent signs).
    value = quote(param, safe="/%" if raw else "", errors="surrogatepass")
    path = template.replace("{model_id:path}", value).replace("{name:path}", value)
    r = app.client.request(method, f"{path}?{urlencode(query, errors='surrogatepass')}")
    check_answer(r, "")
    check_still_serving(app)


# --- models-dir headers (#28): what a GGUF file in --models-dir may claim --------------------------------------

def gguf_headers() -> st.SearchStrategy[bytes]:
    """A tiny model's header with the dimensions a memory estimate and an adapter check read replaced by drawn
    values of any GGUF type (NaN, negatives, strings, arrays claiming 2**40 items), counts that lie, tensors too
    big for the file, and the whole cut short anywhere."""
    from support.gguf_files import Array, V, tiny_model

    ints = {V.UINT8: (0, 2**8 - 1), V.INT8: (-(2**7), 2**7 - 1), V.UINT16: (0, 2**16 - 1), V.INT16: (-(2**15), 2**15 - 1),
            V.UINT32: (0, 2**32 - 1), V.INT32: (-(2**31), 2**31 - 1), V.UINT64: (0, 2**64 - 1), V.INT64: (-(2**63), 2**63 - 1)}

    def scalar(value_type: Any) -> st.SearchStrategy[Any]:
        if value_type in ints:
            low, high = ints[value_type]
            return st.sampled_from([low, high, 0, 1, 2, 3, 4096, 65537]).filter(lambda v: low <= v <= high) \
                | st.integers(low, high)
        if value_type == V.BOOL:
            return st.booleans()
        return st.floats(width=32 if value_type == V.FLOAT32 else 64)  # NaN and infinities included

    scalar_types = st.sampled_from([*ints, V.BOOL, V.FLOAT32, V.FLOAT64])
    typed_scalar = scalar_types.flatmap(lambda t: scalar(t).map(lambda v: (t, v)))
    array = scalar_types.flatmap(lambda t: st.tuples(st.lists(scalar(t), max_size=6),
                                                     st.sampled_from([None, None, None, 2**20, 2**40, 2**63])).map(
        lambda items: (V.ARRAY, Array(t, items[0], claimed=items[1]))))
    strings = st.tuples(st.just(V.STRING), st.text(max_size=8) | EDGE_STRINGS)
    string_array = st.sampled_from([2**24, 2**40]).map(lambda n: (V.ARRAY, Array(V.STRING, [], claimed=n)))
    # Mostly numbers, so most headers get as far as the dimension checks; the rest lie in every other way.
    values = st.one_of(typed_scalar, typed_scalar, typed_scalar, array, strings, string_array)
    keys = ["block_count", "embedding_length", "feed_forward_length", "attention__head_count",
            "attention__head_count_kv", "attention__key_length", "attention__value_length", "context_length"]

    @st.composite
    def header(draw: st.DrawFn) -> bytes:
        built = tiny_model(**draw(st.dictionaries(st.sampled_from(keys), values, max_size=4)))
        if draw(st.integers(0, 7)) == 0:
            built.kv["general.architecture"] = draw(values | strings)
        if draw(st.integers(0, 7)) == 0:
            built.claimed_kv = draw(st.sampled_from([0, 100, 2**16, 2**40]))
        if draw(st.integers(0, 7)) == 0:
            built.claimed_tensors = draw(st.sampled_from([0, 100, 2**16, 2**40]))
        if draw(st.integers(0, 7)) == 0:
            built.tensors["token_embd.weight"] = (8, draw(st.sampled_from([2**20, 2**31, 2**40])))
            built.with_data = False
        data = built.bytes()
        return data[:draw(st.integers(0, len(data)))] if draw(st.integers(0, 7)) == 0 else data

    return header()


GGUF_HEADERS = gguf_headers()


@FUZZ
@given(data=GGUF_HEADERS)
def test_models_dir_headers_never_fail_the_listing_or_a_chat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            data: bytes) -> None:
    import contextlib
    import tracemalloc

    from support.inprocess import start_fake

    from nomoat import config
    from nomoat.engine.errors import ModelFileError
    from nomoat.residency.footprint import estimate

    for key in [k for k in os.environ if k.startswith("NOMOAT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NOMOAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # no ./models.toml
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    (folder / "drawn.gguf").write_bytes(data)
    _, models = config.load({"models_dir": folder})
    drawn = next(m for m in models.models if m.name == "drawn")
    # The estimate refuses before it builds anything per claimed layer, item or key: its memory stays small.
    tracemalloc.start()
    try:
        with contextlib.suppress(ModelFileError):
            estimate(drawn)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    server = start_fake(monkeypatch, models=models)
    srv = next(server)
    try:
        listed = srv.client.get("/v1/models")
        assert listed.status_code == 200, listed.text[:2000]
        card = next(m for m in listed.json()["data"] if m["id"] == "drawn")
        assert card["status"] in ("unloaded", "failed") and (card["status"] == "unloaded") == ("error" not in card)
        r = srv.client.post("/v1/chat/completions", json={"model": "drawn", "max_tokens": 2,
                                                          "messages": [{"role": "user", "content": "hi"}]})
        # Served, too large for the budget (400), or failed with its reason (503): never a 500.
        assert r.status_code in (200, 400, 503), r.text[:2000]
        if r.status_code != 503:
            check_answer(r, "chat")
        if card["status"] == "failed":
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"
            assert card["error"] in r.json()["error"]["message"]
        assert srv.client.get("/v1/models").status_code == 200
        check_answer(srv.client.post("/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}), "chat")
    finally:
        for _ in server:
            pass


# --- Responses items (#28): nested deep, holding NaN or Infinity, large, along a chain -----------------------


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def response_bodies() -> st.SearchStrategy[str]:
    """A Responses body as raw JSON text (NaN and Infinity literals and deep nesting as a careless client sends
    them), with one drawn hazard: a function call's arguments nested `depth` levels, a tool's parameters holding
    a non-finite number, or a reasoning item of `size` bytes (stored with its turn, never in a prompt); streamed
    or not, stored or not."""
    depths = st.sampled_from([1, 8, 63, 64, 65, 400, 900, 5000])
    numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0.0", "5e-324"])
    sizes = st.sampled_from([1000, 15_000, 17_000, 40_000, 70_000])

    @st.composite
    def body(draw: st.DrawFn) -> str:
        hazard = draw(st.sampled_from(["none", "deep", "number", "large"]))
        depth = draw(depths) if hazard == "deep" else 2
        number = draw(numbers) if hazard == "number" else "1"
        size = draw(sizes) if hazard == "large" else 10
        items = [f'{{"type": "reasoning", "content": [{{"type": "reasoning_text", "text": "{"r" * size}"}}]}}',
                 f'{{"type": "function_call", "call_id": "c1", "name": "f", "arguments": {_nested(depth)}}}',
                 '{"type": "function_call_output", "call_id": "c1", "output": "done"}',
                 '{"role": "user", "content": "SAY:ok"}']
        tool = f'{{"type": "function", "name": "f", "parameters": {{"type": "object", "x-n": {number}}}}}'
        fields = {"stream": draw(st.sampled_from(["true", "false"])), "store": draw(st.sampled_from(["true", "false"]))}
        return (f'{{"model": "{MODEL}", "input": [{", ".join(items)}], "tools": [{tool}], "max_output_tokens": 4, '
                + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}")

    return body()


def strict_json(text: str) -> Any:
    """JSON as the spec has it: a NaN or Infinity literal is an error."""
    def refuse(literal: str) -> Any:
        raise AssertionError(f"not JSON: {literal} in {text[:300]}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture()
def store_app(fake_factory: Any, tmp_path: Path) -> Iterator[FakeServer]:
    """Small body and store limits, so drawn items cross them."""
    yield fake_factory(max_body_bytes=64 * 1024, state_dir=tmp_path / "state", responses_max_stored_bytes=16 * 1024)


@FUZZ
@given(body=response_bodies(), continue_last=st.booleans())
def test_responses_items_deep_non_finite_or_large_are_served_or_refused_cleanly(
        store_app: FakeServer, body: str, continue_last: bool) -> None:
    client = store_app.client
    last = getattr(store_app, "last_stored", None)
    if continue_last and last is not None:
        body = body[:-1] + f', "previous_response_id": "{last}"}}'
    r = client.post("/v1/responses", content=body.encode(), headers=JSON_HEADERS)
    assert r.status_code < 500, r.text[:2000]
    if r.status_code != 200:
        check_answer(r, "create_response")
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [strict_json(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[-1]["type"] in ("response.completed", "response.incomplete", "response.failed"), events[-1]
    else:
        answer = strict_json(r.text)
        if answer["store"]:
            store_app.last_stored = answer["id"]  # type: ignore[attr-defined]
            # What was stored reads back as JSON, and so does the conversation it ran on.
            assert strict_json(client.get(f"/v1/responses/{answer['id']}").text) == answer
            listed = client.get(f"/v1/responses/{answer['id']}/input_items", params={"limit": 100})
            assert listed.status_code == 200, listed.text[:2000]
            strict_json(listed.text)
    check_still_serving(store_app)


# --- grammars (#28): ambiguous ones, nested repetitions, counts with leading zeros --------------------------

def grammars() -> st.SearchStrategy[str]:
    """GBNF as a probing client writes it: random expressions over literals, classes, groups and rules that
    refer to each other (recursion included), repetitions with huge or zero-padded counts, and families of
    ambiguous rules whose alternatives share a prefix but not what follows it (each shared prefix multiplies
    llama.cpp's parse stacks)."""
    count = st.sampled_from(["0", "1", "2", "3", "5", "01", "007", "12"])
    atom = st.sampled_from(['"x"', '"xy"', '"\\u00e9"', "[a-c]", "[^x]", ".", "a", "b", '""', '"\\x00"'])

    def postfix(item: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        plain = st.sampled_from(["", "", "*", "+", "?"])
        braced = count.map(lambda n: f"{{{n}}}") | st.tuples(count, count | st.just("")).map(
            lambda mn: f"{{{min(mn, key=lambda n: int(n or 99))},{max(mn, key=lambda n: int(n or 99))}}}")
        suffix = st.one_of(plain, plain, plain, braced)
        return st.tuples(item, suffix).map("".join)

    expression = st.recursive(postfix(atom), lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=4).map(" ".join),
        st.lists(inner, min_size=2, max_size=4).map(" | ".join),
        postfix(inner.map(lambda e: f"({e})")),
    ), max_leaves=10)
    shared = st.sampled_from(['"x"', '"x" "x"', "[a-z]", '"x"?'])
    ambiguous = st.tuples(shared, st.integers(2, 5)).map(
        lambda sk: " | ".join(f'{sk[0]} a "{i}"' for i in range(sk[1])) + ' | "w"')
    nested = st.tuples(st.integers(1, 40), st.integers(1, 40), st.booleans()).map(
        lambda nm: f'(("a"{"?" if nm[2] else ""}){{0,{nm[0]}}}){{0,{nm[1]}}} "b"')
    # Counts past the limit that only their leading zeros hide, and harmless zero-padded ones.
    zeros = st.sampled_from(['"a"{0000000001001}', '("a"{0000000002000}){0000000002000}', '"a"{0000000000003}',
                             '"a"{00,0000000000010}', '"a"{5,0000000999999}', '"a"{99999999999999999999}'])
    return st.tuples(expression, expression | ambiguous, expression | nested | zeros).map(
        lambda rules: f"root ::= {rules[0]} | {rules[2]}\na ::= {rules[1]}\nb ::= \"b\" a? | \"q\"")


@FUZZ
@given(grammar=grammars(), path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_grammars_are_served_or_refused_cleanly(app: FakeServer, grammar: str, path: str) -> None:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 2, "grammar": grammar}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    r = app.client.post(path, json=body)
    check_answer(r, "chat" if "chat" in path else "completions")
    assert r.status_code in (200, 400), r.text[:2000]
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "invalid_grammar", r.text[:2000]
    else:  # what passed starts with as many parses in llama.cpp as the check's model of it counted
        import llama_cpp
        from test_grammar_limits import _vocab
        from test_grammar_stacks import start_stacks

        from nomoat.engine.grammar_guard import GrammarGuard

        _, vocab = _vocab()
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if sampler:  # llama.cpp refuses some (left recursion): a 400 from the engine, tested elsewhere
            try:
                assert GrammarGuard(sampler, vocab, grammar.encode()).live_stacks() == start_stacks(grammar)
            finally:
                llama_cpp.llama_sampler_free(sampler)
    check_still_serving(app)
