"""The scripts in examples/ run against a test server (OPENAI_BASE_URL) and finish without an error."""

from __future__ import annotations

import shutil

import pytest
from clients_fixtures import run_against, run_python
from conftest import ROOT

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("script", ["openai_sdk.py", "langchain_chat.py", "llamaindex_chat.py"])
def test_python_example(clients_server, monkeypatch, capsys, script):
    path = EXAMPLES / script
    run_python(path.read_text(), str(path), clients_server, monkeypatch, capsys)


def test_curl_example(clients_server, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    out = run_against(["bash", str(EXAMPLES / "curl.sh")], clients_server, tmp_path)
    for section in ("chat", "structured output", "tool call", "embeddings"):
        assert f"== {section}" in out
    assert "data: [DONE]" in out and '"tool_calls"' in out and '"embedding"' in out
