"""GET /openapi.json: a valid OpenAPI 3.1 document of every route, its request bodies the protocol models' schemas."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.requests import Request
from starlette.responses import Response

from nomoat.http.openapi import REQUEST_MODELS
from nomoat.wire.routes import ENDPOINTS, Handler, RouteWiringError, build_routes


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The node a (chain of) local $ref leads to; a KeyError when one leads nowhere."""
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def test_the_document_is_valid_openapi_3_1_and_served_without_a_key(fake_factory):
    fake = fake_factory(api_key="k")
    r = fake.client.get("/openapi.json")
    assert r.status_code == 200, r.text
    document = r.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    assert fake.client.get("/v1/models").status_code == 401  # the key is required elsewhere


def test_every_route_is_described_and_every_post_body_resolves_to_its_model(fake):
    document = fake.client.get("/openapi.json").json()
    for endpoint in ENDPOINTS:
        template = endpoint.path.replace(":path}", "}")
        operation = document["paths"][template][endpoint.method.lower()]
        assert operation["operationId"].startswith(endpoint.name)  # rerank_v2: a second path's id is its own
        if endpoint.name in REQUEST_MODELS:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            resolved = resolve(document, schema)
            model = REQUEST_MODELS[endpoint.name]
            assert set(resolved["properties"]) == set(model.model_json_schema()["properties"])
            for field in resolved["properties"].values():
                for ref in _refs(field):
                    assert resolve(document, {"$ref": ref}), ref
    error = resolve(document, {"$ref": "#/components/schemas/Error"})
    assert error["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    assert "/v1" in document["info"]["description"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


async def _handler(request: Request) -> Response:
    return Response()


def test_the_table_and_the_handlers_must_agree_or_the_app_is_not_built():
    handlers: dict[str, Handler] = {endpoint.name: _handler for endpoint in ENDPOINTS}
    assert {route.name.split(":")[0] for route in build_routes(handlers)} == set(handlers)
    with pytest.raises(RouteWiringError, match=r"routes without a handler: get_model \(GET /v1/models/"):
        build_routes({name: h for name, h in handlers.items() if name != "get_model"})
    with pytest.raises(RouteWiringError, match=r"no route in the table is named list_model$"):
        build_routes({**handlers, "list_model": _handler})
    with pytest.raises(RouteWiringError, match="no route in the table is named ui_page"):
        build_routes(handlers, off=["ui_page"])
    without_page = {name: h for name, h in handlers.items() if not name.startswith("ui_")}
    routes = {route.path: route for route in build_routes(without_page, off=["ui_index", "ui_file"])}
    assert routes["/"].endpoint is not _handler and routes["/v1/models"].endpoint is _handler  # "/" says it is off


def test_a_route_turned_off_is_a_404_that_says_so_even_where_another_pattern_matches(fake):
    """The fake app has no reloader: /admin/reload and POST /models/pull are off. Pull's path also matches GET
    /models/{id}, which made it a 405 while it was simply unmounted."""
    for path in ("/admin/reload", "/models/pull"):
        r = fake.client.post(path, json={"model": "x"})
        assert r.status_code == 404, r.text
        assert "turned off in this server's configuration" in r.json()["error"]["message"]
