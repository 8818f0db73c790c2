"""POST /tokenize, /detokenize and /apply-template: shapes and 400s in process over the fake engine, then
the real model's vocabulary and template on the shared server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support.inprocess import MODEL

USER = [{"role": "user", "content": "Hi there"}]


# --- in process -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenize_and_detokenize_shapes(fake, prefix: str) -> None:
    r = fake.client.post(f"{prefix}/tokenize", json={"content": "hé"})
    assert r.status_code == 200 and r.json() == {"tokens": [ord("h"), ord("é")]}
    r = fake.client.post(f"{prefix}/tokenize", json={"content": "hé", "with_pieces": True, "model": MODEL})
    assert r.json() == {"tokens": [{"id": ord("h"), "piece": "h"}, {"id": ord("é"), "piece": "é"}]}
    r = fake.client.post(f"{prefix}/detokenize", json={"tokens": [ord("h"), ord("é")]})
    assert r.status_code == 200 and r.json() == {"content": "hé"}
    assert fake.client.post(f"{prefix}/tokenize", json={"content": ""}).json() == {"tokens": []}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {}, "content"),
    ("/tokenize", {"content": 5}, "content"),
    ("/tokenize", {"content": "x", "with_pieces": "many"}, "with_pieces"),
    ("/detokenize", {"tokens": [1, 10**9]}, "tokens"),
    ("/detokenize", {"tokens": [-1]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
    ("/apply-template", {}, "messages"),
    ("/apply-template", {"messages": USER, "chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ("/apply-template", {"messages": USER, "reasoning_effort": "extreme"}, "reasoning_effort"),
])
def test_bad_bodies_are_400s_naming_the_field(fake, path: str, body: dict[str, Any], param: str) -> None:
    r = fake.client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_an_unknown_model_is_404(fake) -> None:
    assert fake.client.post("/tokenize", json={"content": "x", "model": "nope"}).status_code == 404


def test_apply_template_renders_what_chat_evaluates(fake) -> None:
    prompt = fake.client.post("/apply-template", json={"messages": USER}).json()["prompt"]
    assert prompt == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    r = fake.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == len(prompt)  # the fake's tokens are characters
    assert fake.engine.outstanding == 0


# --- the real model ---------------------------------------------------------------------------------

def test_real_tokenize_round_trip_with_pieces(client: httpx.Client) -> None:
    text = "Hello wörld <|im_end|> 🦙"
    ids = client.post("/tokenize", json={"content": text}).json()["tokens"]
    assert all(isinstance(t, int) for t in ids)
    assert client.post("/detokenize", json={"tokens": ids}).json() == {"content": text}
    # Control tokens written as text are read as themselves unless parse_special is false.
    plain = client.post("/tokenize", json={"content": text, "parse_special": False}).json()["tokens"]
    assert len(plain) > len(ids)
    pieces = client.post("/tokenize", json={"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert raw.decode() == text
    assert any(isinstance(p["piece"], list) for p in pieces)  # the llama's 4 bytes span byte tokens
    r = client.post("/detokenize", json={"tokens": [10**7]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


def test_real_apply_template_is_the_prompt_chat_evaluates(client: httpx.Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    prompt = client.post("/apply-template", json={"messages": messages}).json()["prompt"]
    assert prompt.endswith("<|im_start|>assistant\n") and "Be brief." in prompt
    tokens = client.post("/tokenize", json={"content": prompt, "add_special": True}).json()["tokens"]
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == len(tokens)
