"""Starting up: a busy port fails before any model loads; the log says where the configuration, state, model
cache, API and page are; GET /v1 answers an index of the API instead of a 404."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import models_toml
from streams import wait_for
from support.process import run_nomoat

from nomoat import __version__, config
from nomoat.http.listen import CannotListen, close_all, listening_sockets
from nomoat.settings import Settings
from nomoat.wire.routes import ENDPOINTS


def test_a_busy_port_exits_2_before_any_model_loads(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(models_toml())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_nomoat("serve", "--config", str(tmp_path / "models.toml"), "--port", str(port),
                          env={**os.environ, "NOMOAT_STATE_DIR": str(tmp_path / "state")}, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"port {port} is in use (by another nomoat? try --port)"), lines
    assert "models.toml" not in done.stderr and "loaded" not in done.stderr  # nothing was read or loaded


def test_a_busy_port_on_another_host_names_the_host() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.2", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CannotListen, match=rf"^port {port} on 127\.0\.0\.2 is in use \(by another nomoat"):
            listening_sockets("127.0.0.2", port)


def test_the_sockets_listen_at_once_and_an_unknown_host_is_said_plainly() -> None:
    sockets = listening_sockets("127.0.0.1", 0)
    try:
        with socket.create_connection(sockets[0].getsockname()[:2], timeout=5):
            pass  # accepted into the backlog before anything serves
    finally:
        close_all(sockets)
    with pytest.raises(CannotListen, match=r"^cannot listen on no-such-host\.invalid: "):
        listening_sockets("no-such-host.invalid", 8000)


def test_the_log_says_where_everything_is(start_server, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    srv = start_server(models_toml(), env={"HF_HOME": str(hf_home)})
    serving = f"on {srv.base_url}/v1 (loaded: smollm2-135m); the page: {srv.base_url}/\n"
    # The line comes once uvicorn serves, which may be a moment after the first /health answered.
    log = wait_for(lambda: serving in srv.log() and srv.log(), what="the serving line")
    assert f"models.toml: {srv.config}\n" in log
    assert f"state: {srv.config.parent / 'state'}; model cache (Hugging Face): {hf_home / 'hub'}\n" in log


def test_without_models_toml_the_places_searched_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NOMOAT_CONFIG", raising=False)
    monkeypatch.delenv("NOMOAT_MODEL", raising=False)
    assert config.config_source(Settings()) == (
        f"no models.toml found (searched: {tmp_path / 'models.toml'}, {tmp_path / 'xdg/nomoat/models.toml'}, "
        "/etc/nomoat/models.toml): serving the built-in model smollm2-135m")
    (tmp_path / "models.toml").write_text("")
    assert config.config_source(Settings()) == f"models.toml: {tmp_path / 'models.toml'}"


def test_get_v1_is_an_index_of_the_api_without_a_key(fake_factory) -> None:
    fake = fake_factory(api_key="k")
    r = fake.client.get("/v1")
    assert r.status_code == 200, r.text
    index = r.json()
    base = str(fake.client.base_url).rstrip("/")
    assert index["version"] == __version__
    assert index["page"] == f"{base}/" and index["openapi"] == f"{base}/openapi.json"
    assert {"method": "POST", "path": "/v1/chat/completions"} in index["endpoints"]
    assert len(index["endpoints"]) == sum(e.path.startswith("/v1/") for e in ENDPOINTS)
    assert fake.client.get("/v1/").json() == index
    assert fake_factory(ui=False).client.get("/v1").json()["page"] is None
