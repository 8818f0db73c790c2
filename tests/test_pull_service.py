"""`nomoat pull/ls/rm` reach the running server (#31): the files land in ITS cache and state dir and it serves
the model without a restart; no server, the local disk, said in one line; admin only.

Nothing here reaches the internet: both the server and the CLI have HF_ENDPOINT at tests/support/fake_hub.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import models_toml
from support.fake_hub import FakeHub
from support.gguf_files import tiny_model
from support.model import q8_model_path
from support.process import THREADS, ServerProcess, free_port, run_nomoat
from wire import NO_EOS

REPO = "nomoat-test/smol"
HOSTILE = "nomoat-test/hostile"
ADMIN, USER = "admin-key-31", "user-key-31"


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    src = tmp_path_factory.mktemp("hub-files")
    header = tiny_model().bytes()
    big = src / "big"
    big.write_bytes(header + os.urandom(3_000_000 - len(header)))
    hub = FakeHub()
    hub.add_repo(REPO, {"smol-Q4_K_M.gguf": q8_model_path()})
    hub.add_repo(HOSTILE, {"hostile-Q4_K_M.gguf": big})
    hub.misbehave("hostile-Q4_K_M.gguf", "oversize")  # 1 MiB past its size: stopped mid-download
    yield hub
    hub.close()


def _hub_env(hub: FakeHub, home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NOMOAT_", "HF_"))}
    return {**clean, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg"), "HF_ENDPOINT": hub.url,
            "HF_HOME": str(home / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "NOMOAT_STATE_DIR": str(home / "state")}


@pytest.fixture(scope="module")
def server(fake_hub: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("service")
    env = {**_hub_env(fake_hub, root), "NOMOAT_ADMIN_KEY": ADMIN, "NOMOAT_API_KEY": USER}
    proc = ServerProcess(models_toml(load="on_demand"), root, "--parallel", "1", "--threads", str(THREADS), env=env)
    yield proc.wait_ready()
    proc.close()


@pytest.fixture()
def client_env(fake_hub: FakeHub, server: ServerProcess, tmp_path: Path) -> dict[str, str]:
    """A user's shell beside the service: its own HOME, cache and state dir, the server's port and admin key."""
    return {**_hub_env(fake_hub, tmp_path), "NOMOAT_PORT": str(server.port), "NOMOAT_ADMIN_KEY": ADMIN}


def nomoat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_nomoat(*args, env=env, cwd=Path(env["HOME"]))


def test_pull_through_the_server_serves_the_model_then_rm_removes_it(
        server: ServerProcess, client_env: dict[str, str], tmp_path: Path):
    pulled = nomoat(client_env, "pull", REPO)
    assert pulled.returncode == 0, pulled.stderr
    assert f"pulled {REPO} (smol-Q4_K_M.gguf, " in pulled.stdout and f"it serves it as model '{REPO}'" in pulled.stdout
    assert "smol-Q4_K_M.gguf: 100% of " in pulled.stderr  # not a terminal: plain progress lines
    assert "no server" not in pulled.stderr
    # In the server's cache and state dir, none of it in the user's own.
    served_state = server.config.parent / "state"
    assert [m["name"] for m in json.loads((served_state / "pulled.json").read_text())["models"]] == [REPO]
    assert not (tmp_path / "state").exists() and not (tmp_path / "hf").exists()

    with httpx.Client(base_url=server.base_url, timeout=120, headers={"Authorization": f"Bearer {USER}"}) as client:
        assert REPO in [m["id"] for m in client.get("/v1/models").json()["data"]]
        body = {"model": REPO, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "logit_bias": NO_EOS}
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 2

        listed = nomoat(client_env, "ls")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
        assert rows[REPO][1] == "pulled" and rows[REPO][4].startswith(str(server.config.parent / "hf"))
        assert rows["smollm2-135m"][1] == "models.toml"

        removed = nomoat(client_env, "rm", REPO)
        assert removed.returncode == 0, removed.stderr
        assert REPO not in [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert not Path(rows[REPO][4]).exists()
        again = nomoat(client_env, "rm", REPO)
        assert again.returncode == 1 and f"{REPO!r} is not a pulled model (pulled models: none)" in again.stderr


def test_only_the_admin_key_pulls_and_bad_names_are_told(server: ServerProcess, client_env: dict[str, str]):
    user = {**client_env, "NOMOAT_API_KEY": USER}
    del user["NOMOAT_ADMIN_KEY"]
    refused = nomoat(user, "pull", REPO)
    assert refused.returncode == 1 and "answered 403" in refused.stderr and "--admin-key" in refused.stderr
    assert nomoat(user, "ls").returncode == 1
    with httpx.Client(base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        as_user = client.post("/models/pull", json={"model": REPO}, headers={"Authorization": f"Bearer {USER}"})
        assert as_user.status_code == 403 and as_user.json()["error"]["code"] == "permission_denied"
        bad = client.post("/models/pull", json={"model": "not a name"})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == "model" and "OWNER/REPO" in bad.json()["error"]["message"]
        missing = client.post("/models/pull", json={"model": "nomoat-test/nope"})
        assert missing.status_code == 404 and "no such model repository: nomoat-test/nope" in missing.text
        assert client.delete("/v1/models/smollm2-135m").status_code == 404  # models.toml's: not pulled


def test_a_download_failing_mid_stream_is_an_error_event_and_leaves_no_partial_file(server: ServerProcess):
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.stream("POST", server.base_url + "/models/pull", json={"model": HOSTILE}, headers=headers,
                      timeout=60) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in answer.iter_lines() if line.startswith("data:")]
    assert events[0]["object"] == "model.pull.progress" and events[0]["file"] == "hostile-Q4_K_M.gguf"
    assert set(events[-1]) == {"error"}, events[-1]
    assert "more of hostile-Q4_K_M.gguf than the 3000000 bytes" in events[-1]["error"]["message"]
    storage = server.config.parent / "hf" / "hub" / "models--nomoat-test--hostile"
    assert not list(storage.rglob("*.incomplete")) and not list(storage.rglob("*.gguf"))


def test_without_a_server_pull_says_so_and_pulls_locally(fake_hub: FakeHub, tmp_path: Path):
    port = free_port()  # nothing listens there
    env = {**_hub_env(fake_hub, tmp_path), "NOMOAT_PORT": str(port)}
    pulled = nomoat(env, "pull", REPO)
    assert pulled.returncode == 0, pulled.stderr
    line = next(ln for ln in pulled.stderr.splitlines() if ln.startswith("nomoat: no server"))
    assert line.startswith(f"nomoat: no server at http://127.0.0.1:{port}: pulling into {tmp_path / 'hf' / 'hub'}")
    assert "until it" in line and f"serve it as model '{REPO}'" in pulled.stdout
    assert (tmp_path / "state" / "pulled.json").is_file()
