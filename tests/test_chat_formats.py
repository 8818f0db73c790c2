"""Every family's chat format through the real server: the embedded model served under each family's real chat
template (tests/data/templates/, llama.cpp's). `tool_choice` required makes the server's grammar force a call in
the family's own syntax (llama.cpp must accept that grammar, and the model write it), which must come back as the
call; the APIs take turns. For a few families the model is also made to write exactly what that family's model
writes (a `grammar` holding the text), read back as calls and reasoning.

Every family on every API, whole and streamed, is tests/test_chat_formats_inprocess.py (the fake engine); the
parse cases ported from llama.cpp's tests/test-chat.cpp are tests/test_formats_*.py (no server).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from conftest import TEST_THREADS, model_path
from support.chat_formats import APIS, ARGS, FAMILIES, TEMPLATES, THINKS, THOUGHT, ask
from support.process import ServerProcess

from nomoat.formats.base import literal


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's basic-string escapes; ensure_ascii=False keeps astral characters whole
    # (TOML has no surrogate pairs).
    return json.dumps(text, ensure_ascii=False)


@pytest.fixture(scope="module")
def formats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    entries = "".join(
        f'[[models]]\nname = "{name}"\npath = "{model_path()}"\nn_ctx = 4096\nparallel = 1\n'
        f'n_threads = {TEST_THREADS}\nload = "on_demand"\n'
        f"chat_template = {_toml_string((TEMPLATES / f'{template}.jinja').read_text())}\n"
        for name, template, _, _ in FAMILIES)
    config = f'default_model = "{FAMILIES[0][0]}"\n[server]\nmax_loaded_models = 3\n{entries}'
    proc = ServerProcess(config, tmp_path_factory.mktemp("formats")).wait_ready()
    yield proc.base_url
    proc.close()


def test_each_family_gets_its_format(formats_server: str) -> None:
    with httpx.Client(base_url=formats_server, timeout=120) as c:
        got = {}
        for name, _, _, _ in FAMILIES:
            assert c.post("/models/load", json={"model": name}).status_code in (200, 202)
            got[name] = c.get(f"/v1/models/{name}").json().get("chat_format")
    assert got == {name: fmt for name, _, fmt, _ in FAMILIES}


def _turn(name: str, shift: int) -> tuple[str, bool]:
    """The API and stream mode a family's request goes through: each family one, all of them covered in turn
    (tests/test_chat_formats_inprocess.py runs every family on every API, whole and streamed, over the fake)."""
    k = [f[0] for f in FAMILIES].index(name) + shift
    return APIS[k % 3], bool(k // 3 % 2)


# The families whose written calls are also read back from the real model: the others' are read on every API over the
# fake (tests/test_chat_formats_inprocess.py), and a long prompt costs seconds here. These are the fake's blind spots:
# DeepSeek's fullwidth markers, and gpt-oss's channels and a template that opens the thinking block, end to end.
REAL_WRITTEN = {"gpt-oss", "deepseek-r1", "qwen35"}


@pytest.mark.parametrize(("name", "written"), [(f[0], f[3]) for f in FAMILIES], ids=[f[0] for f in FAMILIES])
def test_the_familys_own_calls_are_forced_and_read(formats_server: str, name: str, written: str) -> None:
    """tool_choice required: the server's grammar (which llama.cpp must accept) makes the model write a call in the
    family's own syntax, and it comes back as the call. For REAL_WRITTEN, first the model is made (by a `grammar`
    holding the text) to write the family's own call and thought, which must be read back. Anthropic's API takes
    no `grammar`: its written turn is chat's, streamed."""
    with httpx.Client(base_url=formats_server, timeout=120) as c:
        api, stream = _turn(name, 1)
        reasoning, content, calls = ask(c, api, name, stream=stream, forced=True)
        assert [n for n, _ in calls] == ["special_function"], (api, stream, reasoning, content, calls)
        assert isinstance(calls[0][1]["arg1"], int), calls
        if name not in REAL_WRITTEN:
            return
        api, stream = _turn(name, 0)
        api, stream = ("chat", True) if api == "anthropic" else (api, stream)
        reasoning, content, calls = ask(c, api, name, stream=stream, grammar=f"root ::= {literal(written)}")
    assert calls == [("special_function", ARGS)], (api, stream, reasoning, content, calls)
    assert content.strip() == "", (api, content)
    if name in THINKS:
        assert reasoning == THOUGHT, (api, reasoning)
