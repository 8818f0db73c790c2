"""The snippets of README.md and docs/*.md run verbatim against one test server, so the docs cannot drift.

A snippet is the ```python or ```sh block right after an HTML comment `<!-- snippet: NAME -->`. Python runs in
this interpreter (clients_fixtures.run_python: the client libraries are imported once per session), shell in bash;
both against the session's one clients_server, with the server address the docs write (`http://localhost:8000`
or `http://127.0.0.1:8000`) replaced by the test server's, the only substitution. Every ```python block must be a
snippet, and every ```toml block must parse (and validate, where it holds [[models]]): the other blocks need other
machines, a network or a models.toml of their own."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from clients_fixtures import run_against, run_python
from conftest import ROOT

from nomoat.models_toml import ModelsFile
from nomoat.settings import Settings
from nomoat.wire.routes import ENDPOINTS

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ADDRESSES = ("http://localhost:8000", "http://127.0.0.1:8000")
_SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```(python|sh)\n(.*?)```", re.DOTALL)


def _snippets() -> dict[str, tuple[str, str, str]]:
    """Each snippet by name: (the file it is in, its language, its code)."""
    found: dict[str, tuple[str, str, str]] = {}
    for doc in DOCS:
        for name, language, code in _SNIPPET.findall(doc.read_text()):
            assert name not in found, f"two snippets are named {name}: {found[name][0]} and {doc.name}"
            found[name] = (doc.relative_to(ROOT).as_posix(), language, code)
    return found


SNIPPETS = _snippets()


def _for(server_url: str, code: str) -> str:
    for address in ADDRESSES:
        code = code.replace(address, server_url)
    return code


@pytest.mark.parametrize("name", sorted(n for n, (_, language, _) in SNIPPETS.items() if language == "python"))
def test_python_snippet_runs_verbatim(clients_server, monkeypatch, capsys, name):
    where, _, code = SNIPPETS[name]
    assert '"smollm2-135m"' in code and sum(code.count(a) for a in ADDRESSES) == 1, f"{where}:{name}"
    out = run_python(_for(clients_server.base_url, code), f"{where}:{name}", clients_server, monkeypatch, capsys)
    if name == "anthropic":
        assert "ToolUseBlock" in out and "get_weather" in out, out


@pytest.mark.parametrize("name", sorted(n for n, (_, language, _) in SNIPPETS.items() if language == "sh"))
def test_shell_snippet_runs_verbatim(clients_server, tmp_path, name):
    where, _, code = SNIPPETS[name]
    out = run_against(["bash", "-e", "-c", _for(clients_server.base_url, code)], clients_server, tmp_path)
    # curl exits 0 on an HTTP error: the body says whether the server answered the request or refused it.
    assert not re.search(r'"error":\s*\{', out), f"{where}:{name} was refused:\n{out}"


def test_the_snippets_the_docs_promise_are_there():
    for name in ("curl", "openai", "langchain", "llama-index", "anthropic"):
        assert SNIPPETS.get(name, ("",))[0] == "README.md", f"README.md needs the {name} snippet"
    for doc in DOCS:
        text = doc.read_text()
        untested = text.count("```python\n") - len(re.findall(r"<!-- snippet: [\w-]+ -->\n```python\n", text))
        assert untested == 0, f"{doc.name}: every ```python block needs a <!-- snippet: NAME --> line above it"


def test_every_toml_block_is_a_valid_models_toml():
    for doc in DOCS:
        for block in re.findall(r"```toml\n(.*?)```", doc.read_text(), re.DOTALL):
            data = tomllib.loads(block)
            Settings.model_validate(data.pop("server", {}))
            if "models" in data:  # a whole file, not a fragment of one
                ModelsFile.model_validate(data)


def test_the_two_commands_are_unchanged():
    text = (ROOT / "README.md").read_text()
    # The install builds llama.cpp with its RPC backend (issue #18); --no-cache-dir: README, "Two commands".
    assert ('python3 -m venv .venv && CMAKE_ARGS="-DGGML_RPC=on" .venv/bin/pip install --no-cache-dir . '
            "&& .venv/bin/nomoat serve\n") in text
    assert ".venv/bin/pip install '.[test]' && .venv/bin/python -m pytest\n" in text


def _anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation but - and _ dropped, spaces as -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_between_the_docs_lead_somewhere():
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)]*))?\)", doc.read_text()):
            page = doc.parent / target if target else doc
            assert page.exists(), f"{doc.name} links to {target}, which is not there"
            if anchor and page.suffix == ".md":
                assert anchor in _anchors(page), f"{doc.name} links to {target}#{anchor}, a heading it lacks"


def test_the_api_page_lists_every_endpoint():
    text = (ROOT / "docs" / "api.md").read_text()
    table = re.sub(r"\{[^}]*\}", "{}", text.split("## Endpoints", 1)[1].split("\n## ", 1)[0])
    for endpoint in ENDPOINTS:
        path = re.sub(r"\{[^}]*\}", "{}", endpoint.path)
        assert re.search(rf"[ `]{re.escape(path)}[`,]", table), f"docs/api.md's endpoint table lacks {path}"
