"""API keys: missing, wrong and right keys, admin routes, CORS, and the rules one by one.

The checks of the auth middleware run in process over the fake engine (`keyed_app`); the real
server (`keyed`) keeps what needs the process: keys from NOMOAT_* variables, admin reload, SIGHUP
re-reading the key file, and refusing to start.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import ServerProcess, models_toml
from pydantic import SecretStr
from streams import wait_for
from support.fake_engine import FakeEngine

from nomoat.config import ModelConfig, ModelsFile, embedded_model_path
from nomoat.errors import AuthenticationError, ConfigError, PermissionDeniedError
from nomoat.settings import Settings
from nomoat.wire.auth import Authenticator, KeyRing, exposure_warning, is_admin_route
from nomoat.wire.redact import without_paths

USER_KEYS = ["user-key-1", "user-key-2"]
FILE_KEY = "file-key-3"
ADMIN = "admin-key"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("auth")
    key_file = tmp / "keys.txt"
    key_file.write_text(f"# one key per line\n\n{FILE_KEY}\n")
    proc = ServerProcess(models_toml(), tmp, env={
        "NOMOAT_API_KEY": ",".join(USER_KEYS), "NOMOAT_ADMIN_KEY": ADMIN, "NOMOAT_API_KEY_FILE": str(key_file),
    }).wait_ready()
    yield proc, key_file
    proc.close()


@pytest.fixture()
def keyed_app(fake_factory: Any, tmp_path: Path) -> Any:
    """The same keys as `keyed`, in process."""
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# one key per line\n\n{FILE_KEY}\n")
    return fake_factory(api_key=",".join(USER_KEYS), admin_key=ADMIN, api_key_file=key_file)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def test_health_and_metrics_are_open(keyed_app):
    assert keyed_app.client.get("/health").status_code == 200
    assert keyed_app.client.get("/metrics").status_code == 200


@pytest.mark.parametrize("headers", [{}, _bearer("wrong"), {"Authorization": f"Basic {USER_KEYS[0]}"},
                                     {"Authorization": "Bearer"}, _bearer(USER_KEYS[0] + "x")])
def test_missing_or_wrong_key_is_401_invalid_api_key(keyed_app, headers):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/admin/reload")):
        r = keyed_app.client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (path, r.text)
        err = _error(r)
        assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error"


@pytest.mark.parametrize("key", [*USER_KEYS, FILE_KEY, ADMIN])
def test_every_configured_key_is_accepted(keyed_app, key):
    r = keyed_app.client.post("/v1/chat/completions", headers=_bearer(key),
                              json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_openai_sdk_sees_authentication_error(keyed_app):
    def sdk(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=key, max_retries=0, http_client=keyed_app.client)

    with pytest.raises(openai.AuthenticationError) as info:
        sdk("wrong").models.list()
    assert info.value.code == "invalid_api_key"
    models = sdk(USER_KEYS[1]).models.list()
    assert models.data[0].id == "smollm2-135m"


def test_admin_routes_need_the_admin_key(keyed):
    srv, _ = keyed
    for key in (USER_KEYS[0], FILE_KEY):
        for method, path in (("POST", "/admin/reload"), ("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/x")):
            r = httpx.request(method, srv.base_url + path, headers=_bearer(key))
            assert r.status_code == 403, (method, path, r.text)
            assert _error(r)["code"] == "permission_denied"
    r = httpx.post(srv.base_url + "/admin/reload", headers=_bearer(ADMIN), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "reload", "loaded": [], "removed": [], "unchanged": ["smollm2-135m"], "reconfigured": []}


def test_admin_reload_with_a_broken_file_is_422_and_keeps_serving(keyed):
    srv, _ = keyed
    good = srv.config.read_text()
    srv.config.write_text("not [[ toml")
    try:
        r = httpx.post(srv.base_url + "/admin/reload", headers=_bearer(ADMIN), timeout=60)
        assert r.status_code == 422 and _error(r)["code"] == "invalid_config", r.text
        assert "not valid TOML" in _error(r)["message"]
        assert httpx.get(srv.base_url + "/v1/models", headers=_bearer(ADMIN)).status_code == 200
    finally:
        srv.config.write_text(good)


def test_a_key_added_to_the_key_file_works_after_sighup(keyed):
    srv, key_file = keyed
    new_key = "rotated-key-4"
    assert httpx.get(srv.base_url + "/v1/models", headers=_bearer(new_key)).status_code == 401
    key_file.write_text(f"{FILE_KEY}\n{new_key}\n")
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: httpx.get(srv.base_url + "/v1/models", headers=_bearer(new_key)).status_code == 200,
             what="rotated key accepted")


def test_metrics_can_require_a_key(fake_factory):
    client = fake_factory(metrics_require_key=True, api_key="k").client
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=_bearer("k")).status_code == 200
    assert client.get("/health").status_code == 200


def test_require_api_key_without_a_key_refuses_to_start(start_server):
    srv = start_server(models_toml(), "--require-api-key", wait=False)
    assert srv.proc.wait(60) == 2
    assert "NOMOAT_API_KEY" in srv.log()


def test_unreadable_key_file_refuses_to_start(start_server, tmp_path):
    srv = start_server(models_toml(), wait=False, env={"NOMOAT_API_KEY_FILE": str(tmp_path / "absent")})
    assert srv.proc.wait(60) == 2
    assert "api_key_file" in srv.log()


# --- the rules, without a server -------------------------------------------------------


def _auth(users: list[str], admin: list[str], metrics_require_key: bool = False) -> Authenticator:
    ring = KeyRing(tuple(k.encode() for k in users), tuple(k.encode() for k in admin))
    return Authenticator(ring, metrics_require_key=metrics_require_key)


def test_no_keys_at_all_means_everything_is_open():
    auth = _auth([], [])
    assert auth.check("POST", "/v1/chat/completions", None) is None
    assert auth.check("POST", "/admin/reload", None) is None


def test_only_an_admin_key_keeps_the_api_open_and_closes_admin_routes():
    auth = _auth([], ["a"])
    assert auth.check("POST", "/v1/completions", None) is None
    with pytest.raises(AuthenticationError):
        auth.check("POST", "/admin/reload", None)
    assert auth.check("POST", "/admin/reload", "Bearer a").startswith("key-")


def test_user_keys_without_an_admin_key_close_admin_routes_to_everyone():
    auth = _auth(["u"], [])
    with pytest.raises(PermissionDeniedError, match="NOMOAT_ADMIN_KEY"):
        auth.check("DELETE", "/v1/adapters/x", "Bearer u")
    assert auth.check("GET", "/v1/adapters", "Bearer u")  # reading the list is not a change


def test_key_ids_name_keys_without_revealing_them():
    auth = _auth(["secret-one", "secret-two"], [])
    one = auth.check("GET", "/v1/models", "Bearer secret-one")
    assert one != auth.check("GET", "/v1/models", "bearer  secret-two ") and "secret" not in one


def test_admin_route_classification():
    assert is_admin_route("POST", "/admin/reload")
    assert is_admin_route("POST", "/v1/adapters") and is_admin_route("DELETE", "/v1/adapters/a")
    assert not is_admin_route("GET", "/v1/adapters")
    assert not is_admin_route("POST", "/v1/chat/completions")


def test_exposure_warning_only_for_non_loopback_hosts_without_user_keys():
    open_ring, keyed_ring = KeyRing(), KeyRing((b"k",))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert exposure_warning(Settings(host=host), open_ring) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "myhost.lan"):
        assert "without an API key" in exposure_warning(Settings(host=host), open_ring)
        assert exposure_warning(Settings(host=host), keyed_ring) is None


def test_require_api_key_is_checked_when_keys_are_built(tmp_path: Path):
    with pytest.raises(ConfigError, match="NOMOAT_API_KEY"):
        KeyRing.from_settings(Settings(require_api_key=True))
    ring = KeyRing.from_settings(Settings(require_api_key=True, api_key=SecretStr(" a , b ,")))
    assert ring.user_keys == (b"a", b"b")


# --- CORS ----------------------------------------------------------------------------------


def test_cors_is_off_by_default(keyed_app):
    r = keyed_app.client.get("/v1/models", headers={**_bearer(ADMIN), "Origin": "http://example.test"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = keyed_app.client.options("/v1/chat/completions", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_allow_preflight_without_a_key_and_label_errors(fake_factory):
    origin = "http://app.test"
    client = fake_factory(cors_origins=f"{origin}, http://other.test", api_key="k").client
    preflight = client.options("/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    denied = client.get("/v1/models", headers={"Origin": origin})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin
    ok = client.get("/v1/models", headers={"Origin": origin, **_bearer("k")})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
    stranger = client.get("/v1/models", headers={"Origin": "http://evil.test", **_bearer("k")})
    assert "access-control-allow-origin" not in stranger.headers


# --- GET /status and load errors (#28 item 12) ----------------------------------------------------------


def test_status_takes_the_access_of_the_model_list(keyed_app):
    for path in ("/status", "/v1/models"):
        assert _error(keyed_app.client.get(path))["code"] == "invalid_api_key", path  # /status was open
        assert keyed_app.client.get(path, headers=_bearer(USER_KEYS[0])).status_code == 200, path


def test_load_errors_show_file_paths_to_an_admin_key_only(fake_factory, tmp_path):
    missing = tmp_path / "my models" / "gone.gguf"  # a space: the path is known, not guessed
    models = ModelsFile(models=[ModelConfig(name="a", path=str(embedded_model_path()), load="startup"),
                                ModelConfig(name="gone", path=str(missing))])
    srv = fake_factory(models=models, load_model=lambda config: FakeEngine(config.name), api_key="k", admin_key=ADMIN)
    chat = {"model": "gone", "messages": [{"role": "user", "content": "hi"}]}
    for key, shows in (("k", False), (ADMIN, True)):  # the 503 itself, as the listings below
        r = srv.client.post("/v1/chat/completions", json=chat, headers=_bearer(key))
        assert r.status_code == 503 and _error(r)["code"] == "model_load_failed", r.text
        assert (str(missing) in _error(r)["message"]) is shows and ("my models" in r.text) is shows, r.text

    def errors(key: str) -> list[str]:
        status = srv.client.get("/status", headers=_bearer(key)).json()
        listed = srv.client.get("/v1/models", headers=_bearer(key)).json()["data"]
        one = srv.client.get("/v1/models/gone", headers=_bearer(key)).json()
        return [next(m["error"] for m in status["models"] if m["id"] == "gone"),
                next(m["error"] for m in listed if m["id"] == "gone"), one["error"]]

    for error in errors("k"):
        assert str(tmp_path) not in error and "my models" not in error, error
        assert error.startswith("<path>: cannot be read"), error
    assert all(str(missing) in error for error in errors(ADMIN))


@pytest.mark.parametrize(("message", "shown"), [
    ("/srv/m/x.gguf: llama.block_count is 'abc', not an integer", "<path>: llama.block_count is 'abc', not an integer"),
    ("[Errno 2] No such file or directory: '/x/a b.gguf'", "[Errno 2] No such file or directory: '<path>'"),
    ("draft model ~/d.gguf cannot draft for /t.gguf: its vocab", "draft model <path> cannot draft for <path>: its vocab"),
    ("worker http://10.0.0.1:50052/x refused at 30 tok/s", "worker http://10.0.0.1:50052/x refused at 30 tok/s"),
])
def test_paths_are_taken_out_of_messages(message, shown):
    assert without_paths(message) == shown
