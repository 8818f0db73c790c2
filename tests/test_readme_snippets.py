"""README's LangChain and llama-index snippets run verbatim against a test server.

Each snippet is the ```python block right after an HTML comment `<!-- snippet: NAME -->` in
README.md. It runs as written (in this interpreter: clients_fixtures.run_python), except that its server address,
`http://localhost:8000`, is replaced by the test server's (the only substitution), so the README
cannot drift from what works."""

from __future__ import annotations

import re

import pytest
from clients_fixtures import run_python
from conftest import ROOT

README = ROOT / "README.md"
README_ADDRESS = "http://localhost:8000"


def snippet(name: str) -> str:
    pattern = rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)```"
    found = re.findall(pattern, README.read_text(), flags=re.DOTALL)
    assert len(found) == 1, f"README.md needs exactly one ```python block after <!-- snippet: {name} -->"
    return found[0]


@pytest.mark.parametrize("name", ["langchain", "llama-index", "responses"])
def test_snippet_runs_verbatim(clients_server, monkeypatch, capsys, name):
    code = snippet(name)
    assert code.count(f"{README_ADDRESS}/v1") == 1 and '"smollm2-135m"' in code
    run_python(code.replace(README_ADDRESS, clients_server.base_url), f"README.md:{name}", clients_server, monkeypatch,
               capsys)


def test_anthropic_snippet_runs_verbatim(clients_server, monkeypatch, capsys):
    # The anthropic SDK adds /v1 itself: its base_url is the bare address.
    code = snippet("anthropic")
    assert code.count(f'"{README_ADDRESS}"') == 1 and '"smollm2-135m"' in code
    out = run_python(code.replace(README_ADDRESS, clients_server.base_url), "README.md:anthropic", clients_server,
                     monkeypatch, capsys)
    assert "ToolUseBlock" in out and "get_weather" in out, out


def test_the_two_commands_are_unchanged():
    text = README.read_text()
    # The install builds llama.cpp with its RPC backend (issue #18); --no-cache-dir: README, "Two commands".
    assert ('python3 -m venv .venv && CMAKE_ARGS="-DGGML_RPC=on" .venv/bin/pip install --no-cache-dir . '
            "&& .venv/bin/nomoat serve\n") in text
    assert ".venv/bin/pip install '.[test]' && .venv/bin/python -m pytest\n" in text
