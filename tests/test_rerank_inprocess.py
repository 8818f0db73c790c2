"""/v1/rerank and /v1/score's protocol edges in process, over a fake reranker: validation, bounds, top_n, refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from support.fake_engine import FakeEngine
from support.inprocess import FakeServer, start_fake
from wire import assert_error

from nomoat.config import embedded_model_path
from nomoat.engine.reranker import Reranker, Scores
from nomoat.engine.types import ModelInfo
from nomoat.models_toml import ModelConfig, ModelsFile

RERANKER = "tiny-reranker"
CHAT = "chatty"


class FakeReranker(Reranker):
    """Scores a document by its length (longer: higher), at once; none of Reranker's llama.cpp state."""

    outstanding = 0  # type: ignore[assignment]  # answers at once: never busy

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    async def wait_idle(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        pass

    async def score(self, queries: Sequence[str], documents: Sequence[str], *, field: str = "documents") -> Scores:
        self.calls.append((list(queries), list(documents)))
        return Scores(np.array([float(len(d)) for d in documents], dtype=np.float32), sum(len(d) for d in documents))

    def close(self, timeout: float = 30.0) -> bool:
        return True


@dataclasses.dataclass
class FakeRankingEngine(FakeEngine):
    @property
    def info(self) -> ModelInfo:
        return dataclasses.replace(super().info, kind="reranker")


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    reranker = FakeReranker()
    monkeypatch.setattr("nomoat.registry.Reranker", lambda *args, **kwargs: reranker)
    path = str(embedded_model_path())  # read for its size and header; the fakes load nothing from it
    models = ModelsFile(models=[ModelConfig(name=CHAT, path=path), ModelConfig(name=RERANKER, path=path)])

    def load(config: ModelConfig) -> Any:
        return (FakeRankingEngine if config.name == RERANKER else FakeEngine)(config.name)

    yield from start_fake(monkeypatch, models=models, load_model=load, max_rerank_documents=5)


def post(server: FakeServer, path: str, **body: Any) -> Any:
    return server.client.post(path, json={"model": RERANKER, **body})


def test_sorted_cut_to_top_n_with_or_without_documents(server):
    docs = ["bb", "a", "dddd", {"text": "ccc"}]
    body = post(server, "/v1/rerank", query="q", documents=docs, top_n=2).json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == [(2, 4.0), (3, 3.0)]
    assert body["results"][1]["document"] == {"text": "ccc"}
    assert body["usage"] == {"prompt_tokens": 10, "total_tokens": 10}
    bare = post(server, "/v2/rerank", query="q", documents=docs, top_n=0, return_documents=False).json()
    assert [r["index"] for r in bare["results"]] == [2, 3, 0, 1] and "document" not in bare["results"][0]


@pytest.mark.parametrize(("body", "param"), [
    ({"documents": ["a"]}, "query"),
    ({"query": "", "documents": ["a"]}, "query"),
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": ["a", 3]}, "documents.1"),
    ({"query": "q", "documents": [{"title": "x"}]}, "documents.0"),
    ({"query": "q", "documents": ["a"], "top_n": -1}, "top_n"),
    ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
    ({"query": "q", "documents": ["a"] * 6}, "documents"),
])
def test_bad_rerank_bodies_are_400s_naming_the_field(server, body, param):
    error = assert_error(post(server, "/v1/rerank", **body), 400)
    assert error["param"] is not None and error["param"].startswith(param.split(".")[0]), error
    if len(body.get("documents", [])) == 6:
        assert "at most 5" in error["message"]


def test_score_one_against_many_and_pairwise(server):
    one = post(server, "/v1/score", text_1="q", text_2=["aa", "b"]).json()
    assert [(d["index"], d["object"], d["score"]) for d in one["data"]] == [(0, "score", 2.0), (1, "score", 1.0)]
    assert one["object"] == "list" and one["usage"]["completion_tokens"] == 0
    assert post(server, "/v1/score", text_1=["x", "y"], text_2=["aa", "b"]).status_code == 200
    assert_error(post(server, "/v1/score", text_1=["x", "y"], text_2=["a", "b", "c"]), 400, param="text_1")
    assert_error(post(server, "/v1/score", text_1=[], text_2=["a"]), 400, param="text_1")
    assert_error(post(server, "/v1/score", text_1="q", text_2=["a"] * 6), 400, param="text_2")


def test_chat_model_asked_to_rerank_names_the_rerankers(server):
    assert post(server, "/v1/rerank", query="q", documents=["a"]).status_code == 200  # loaded: its kind is known
    error = assert_error(server.client.post("/v1/rerank", json={"model": CHAT, "query": "q", "documents": ["a"]}),
                         400, param="model", code="model_not_supported")
    assert "chat model" in error["message"] and RERANKER in error["message"]


def test_reranker_asked_to_chat_or_embed_says_it_is_a_reranker(server):
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"}), ("/v1/embeddings", {"input": "hi"})):
        error = assert_error(post(server, path, **body), 400, param="model", code="model_not_supported")
        assert "is a reranker" in error["message"], path


def test_unknown_model_is_404(server):
    r = server.client.post("/v1/rerank", json={"model": "nope", "query": "q", "documents": ["a"]})
    assert r.status_code == 404
