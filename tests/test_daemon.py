"""The daemon lifecycle against real subprocesses: SIGTERM drains in-flight streams, SIGHUP applies models.toml.

The SIGHUP tests share one server (`reloading`); each brings it to the models it starts from.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
from conftest import ServerProcess, model_path, models_toml
from lora_factory import write_lora
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


SECOND = '[[models]]\nname = "second"\npath = "embedded:smollm2-135m"\nn_ctx = 512\nparallel = 1\nn_threads = 1\n'
BASE_IDS = ["smollm2-135m", "default"]


@pytest.fixture(scope="module")
def reloading(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the SIGHUP tests: each first brings the models it expects with a reload of its own."""
    proc = ServerProcess(models_toml(), tmp_path_factory.mktemp("reloading")).wait_ready()
    yield proc
    proc.close()


def _reload_to(srv: ServerProcess, config: str, ids: list[str]) -> None:
    """Write `config`, SIGHUP unless the ids listed already are `ids` (in any order), wait until they are."""
    srv.config.write_text(config)
    if sorted(_model_ids(srv.base_url)) != sorted(ids):
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: sorted(_model_ids(srv.base_url)) == sorted(ids), what=f"models {ids}")


def test_sighup_adds_a_model_and_an_alias_without_touching_in_flight_streams(reloading):
    srv = reloading
    _reload_to(srv, models_toml(), BASE_IDS)
    before = {m["id"]: m for m in httpx.get(srv.base_url + "/v1/models").json()["data"]}
    unchanged_before = srv.log().count("unchanged ['smollm2-135m']")
    [reader] = start_streams(srv.base_url + "/v1/completions", [long_completion(max_tokens=64)])
    srv.config.write_text(models_toml().replace('aliases = ["default"]', 'aliases = ["default", "renamed"]') + SECOND)
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
    assert srv.log().count("unchanged ['smollm2-135m']") > unchanged_before


def test_sighup_removes_a_model(reloading):
    srv = reloading
    _reload_to(srv, models_toml() + SECOND, ["smollm2-135m", "second", "default"])
    removed_before = srv.log().count("removed ['second']")
    srv.config.write_text(models_toml())
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "second" not in _model_ids(srv.base_url), what="model 'second' removed")
    r = httpx.post(srv.base_url + "/v1/completions", json=long_completion("second", max_tokens=4), timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    wait_for(lambda: srv.log().count("removed ['second']") > removed_before, what="removal logged")


def test_sighup_with_a_broken_models_toml_keeps_the_old_config(reloading):
    srv = reloading
    _reload_to(srv, models_toml(), BASE_IDS)
    failed_before = srv.log().count("reload failed")
    (srv.config.parent / "garbage.gguf").write_bytes(b"GGUF but not really" * 100)
    for n, broken in enumerate([
        "this is [[ not toml",
        models_toml().replace(f'path = "{model_path()}"', 'path = "missing.gguf"'),
        models_toml() + "unknown_key = 1\n",
        # Valid file, but llama.cpp cannot load the new model: fails after validation, in apply() (a model
        # loaded at startup: an on-demand one would only fail on its first request).
        models_toml() + '[[models]]\nname = "junk"\npath = "garbage.gguf"\nn_ctx = 256\nparallel = 1\nload = "startup"\n',
    ], start=failed_before):
        srv.config.write_text(broken)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda n=n: srv.log().count("reload failed") > n, what="reload failure logged")
        r = httpx.post(srv.base_url + "/v1/completions", json=long_completion(max_tokens=4), timeout=60)
        assert r.status_code == 200, r.text
    assert _model_ids(srv.base_url) == BASE_IDS
    assert srv.proc.poll() is None


def test_sighup_names_changed_settings_it_cannot_apply(reloading):
    srv = reloading
    warned_before = srv.log().count("reload does not apply")
    srv.config.write_text(models_toml(server="max_tokens_limit = 16\ncors_origins = \"http://a.test\""))
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: srv.log().count("reload does not apply") > warned_before, what="restart-only warning")
    line = [ln for ln in srv.log().splitlines() if "reload does not apply" in ln][-1]
    assert "cors_origins" in line and "max_tokens_limit" in line and "port" not in line


def test_sighup_replacing_the_default_model_keeps_runtime_adapters(start_server, tmp_path):
    """Drop-in and API adapters follow their model to its new engine under the same names; the watcher
    still tracks its own: deleting the file unloads it, a new file replaces it."""
    adapter_dir = tmp_path / "adapters"
    adapter_dir.mkdir()
    write_lora(adapter_dir / "a.gguf", seed=1, std=0.12)
    write_lora(adapter_dir / "c.gguf", seed=3, std=0.12)
    write_lora(tmp_path / "b.gguf", seed=2, std=0.12)
    srv = start_server(models_toml(extra="prefix_cache = false\n"), "--adapter-dir", str(adapter_dir),
                       "--watch-adapters", "--state-dir", str(tmp_path / "state"))
    wait_for(lambda: "a" in _adapters(srv.base_url), what="drop-in adapter 'a' loaded")
    r = httpx.post(srv.base_url + "/v1/adapters", json={"name": "api-c", "path": "c.gguf", "scale": 0.5}, timeout=60)
    assert r.status_code == 201, r.text
    before = {model: _answer(srv.base_url, model) for model in ("a", "api-c", "smollm2-135m")}
    assert len(set(before.values())) == 3

    srv.config.write_text(models_toml(n_ctx=1024, extra="prefix_cache = false\n"))
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "loaded ['smollm2-135m']" in srv.log(), what="the default model reloaded")
    after = {m["id"]: m for m in httpx.get(srv.base_url + "/v1/models", timeout=10).json()["data"]}
    assert after["smollm2-135m"]["max_model_len"] == 1024
    assert {"a", "api-c"} <= set(after), srv.log()
    assert {model: _answer(srv.base_url, model) for model in before} == before
    listed = _adapters(srv.base_url)
    assert (listed["a"]["origin"], listed["api-c"]["origin"], listed["api-c"]["scale"]) == ("watch", "api", 0.5)

    (tmp_path / "b.gguf").replace(adapter_dir / "a.gguf")  # the watcher still owns 'a': it replaces it
    wait_for(lambda: _adapters(srv.base_url)["a"]["sha256"] != listed["a"]["sha256"], what="'a' replaced")
    assert _answer(srv.base_url, "a") != before["a"]
    (adapter_dir / "a.gguf").unlink()
    wait_for(lambda: "a" not in _adapters(srv.base_url), what="'a' unloaded with its file")
    assert _answer(srv.base_url, "api-c") == before["api-c"]
    assert "Traceback" not in srv.log()


def _adapters(base_url: str) -> dict[str, dict]:
    return {a["id"]: a for a in httpx.get(base_url + "/v1/adapters", timeout=10).json()["data"]}


def _answer(base_url: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
            "temperature": 0, "max_tokens": 12}
    r = httpx.post(base_url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]
