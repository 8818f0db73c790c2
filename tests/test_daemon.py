"""The daemon lifecycle against real subprocesses: SIGTERM drains in-flight streams, SIGHUP applies models.toml."""

from __future__ import annotations

import signal

import httpx

from conftest import models_toml
from streams import long_completion, start_streams, wait_for


def _model_ids(base_url: str) -> list[str]:
    return [m["id"] for m in httpx.get(base_url + "/v1/models", timeout=10).json()["data"]]


def _connection_refused(base_url: str) -> bool:
    try:
        httpx.get(base_url + "/health", timeout=2)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True  # refused, or reset while waiting in the backlog of the closing listener
    return False


def test_sigterm_drains_in_flight_streams_and_exits_0(start_server):
    # A grace period far above the streams' length, even on a loaded 2-core machine.
    srv = start_server(models_toml(), "--shutdown-grace-seconds", "300")
    readers = start_streams(srv.base_url + "/v1/completions", [long_completion(max_tokens=64)] * 4)
    srv.proc.send_signal(signal.SIGTERM)
    # The listener closes at once; the process stays up for the streams it admitted.
    wait_for(lambda: _connection_refused(srv.base_url), timeout=30, what="listener closed")
    assert srv.proc.poll() is None, "exited before its streams finished:\n" + srv.log()
    for reader in readers:
        reader.join(280)  # generous: CI machines are 2 shared cores
        assert reader.done and reader.finish_reasons() == ["length"], reader.describe() + "\n" + srv.log()
    assert srv.proc.wait(120) == 0, srv.log()
    assert "draining in-flight requests" in srv.log()


def test_sigterm_after_grace_period_cuts_streams_and_still_exits_0(start_server):
    srv = start_server(models_toml(), "--shutdown-grace-seconds", "0")
    [reader] = start_streams(srv.base_url + "/v1/completions", [long_completion(max_tokens=64)])
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(60) == 0, srv.log()
    reader.join(30)
    assert not reader.is_alive()
    assert not reader.done, "a zero grace period must cut the stream: " + reader.describe()


def test_sighup_adds_a_model_and_an_alias_without_touching_in_flight_streams(start_server):
    srv = start_server(models_toml())
    before = {m["id"]: m for m in httpx.get(srv.base_url + "/v1/models").json()["data"]}
    [reader] = start_streams(srv.base_url + "/v1/completions", [long_completion(max_tokens=64)])
    srv.config.write_text(
        models_toml().replace('aliases = ["default"]', 'aliases = ["default", "renamed"]')
        + '[[models]]\nname = "second"\npath = "embedded:smollm2-135m"\nn_ctx = 512\nparallel = 1\nn_threads = 1\n'
    )
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "second" in _model_ids(srv.base_url), what="model 'second' listed")
    assert "renamed" in _model_ids(srv.base_url)
    for model in ("second", "renamed"):
        r = httpx.post(srv.base_url + "/v1/completions", json=long_completion(model, max_tokens=4), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
    reader.join(280)
    assert reader.done and reader.finish_reasons() == ["length"], reader.describe()
    assert reader.chunks()[-1]["model"] == "smollm2-135m"
    # The unchanged model was kept, not reloaded: same card creation time.
    after = {m["id"]: m for m in httpx.get(srv.base_url + "/v1/models").json()["data"]}
    assert after["smollm2-135m"]["created"] == before["smollm2-135m"]["created"]
    assert "unchanged ['smollm2-135m']" in srv.log()


def test_sighup_removes_a_model(start_server):
    two = models_toml() + '[[models]]\nname = "second"\npath = "embedded:smollm2-135m"\nn_ctx = 512\nparallel = 1\nn_threads = 1\n'
    srv = start_server(two)
    assert "second" in _model_ids(srv.base_url)
    srv.config.write_text(models_toml())
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "second" not in _model_ids(srv.base_url), what="model 'second' removed")
    r = httpx.post(srv.base_url + "/v1/completions", json=long_completion("second", max_tokens=4), timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    wait_for(lambda: "removed ['second']" in srv.log(), what="removal logged")


def test_sighup_with_a_broken_models_toml_keeps_the_old_config(start_server):
    srv = start_server(models_toml())
    (srv.config.parent / "garbage.gguf").write_bytes(b"GGUF but not really" * 100)
    for n, broken in enumerate([
        "this is [[ not toml",
        models_toml().replace('path = "embedded:smollm2-135m"', 'path = "missing.gguf"'),
        models_toml() + "unknown_key = 1\n",
        # Valid file, but llama.cpp cannot load the new model: fails after validation, in apply().
        models_toml() + '[[models]]\nname = "junk"\npath = "garbage.gguf"\nn_ctx = 256\nparallel = 1\n',
    ]):
        srv.config.write_text(broken)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: srv.log().count("reload failed") > n, what="reload failure logged")
        r = httpx.post(srv.base_url + "/v1/completions", json=long_completion(max_tokens=4), timeout=60)
        assert r.status_code == 200, r.text
    assert _model_ids(srv.base_url) == ["smollm2-135m", "default"]
    assert srv.proc.poll() is None


def test_port_in_use_fails_fast_without_a_traceback(start_server):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        srv = start_server(models_toml(), "--port", str(busy.getsockname()[1]), wait=False)
        assert srv.proc.wait(120) != 0
    assert "address already in use" in srv.log()
    assert "Traceback" not in srv.log()


def test_sighup_names_changed_settings_it_cannot_apply(start_server):
    srv = start_server(models_toml())
    srv.config.write_text(models_toml(server="max_tokens_limit = 16\ncors_origins = \"http://a.test\""))
    srv.proc.send_signal(signal.SIGHUP)
    line = wait_for(lambda: next((ln for ln in srv.log().splitlines() if "reload does not apply" in ln), None),
                    what="restart-only warning")
    assert "cors_origins" in line and "max_tokens_limit" in line and "port" not in line
