"""The web page's server side in process: static serving and its confinement, headers, --no-ui, GET /status."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from support.fake_engine import FakeEngine

from nomoat.config import ModelConfig, ModelsFile, embedded_model_path
from nomoat.http.ui import CONTENT_SECURITY_POLICY, STATIC_DIR, StaticPage
from nomoat.metrics import TokenRate

CHAT = "/v1/chat/completions"
MODEL = "smollm2-135m"


def chat(fake, text: str = "hi", **extra):
    return fake.client.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": text}], **extra})


# --- the page -------------------------------------------------------------------------------------

def test_the_page_is_served_with_a_strict_policy_and_revalidation(fake):
    r = fake.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
                      "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    assert fake.client.head("/").status_code == 200
    again = fake.client.get("/", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_every_file_the_page_loads_is_served_with_its_type(fake):
    """index.html's scripts, styles and icon, and every module a module imports, exist with a type the
    browser accepts under nosniff (a module served as text/plain is refused)."""
    index = fake.client.get("/").text
    wanted = set(re.findall(r'(?:src|href)="(/ui/[^"]+)"', index))
    modules = {"/ui/js/main.js"}
    while modules:
        path = modules.pop()
        r = fake.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "text/javascript; charset=utf-8", path
        wanted.discard(path)
        for imported in re.findall(r'from "\./([\w-]+\.js)"', r.text):
            modules.add("/ui/js/" + imported)
    types = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    for path in wanted:
        r = fake.client.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == types[Path(path).suffix], path
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_page_has_no_inline_code_and_never_parses_text_as_html():
    """What the policy forbids is not in the page, and the scripts never turn text into markup."""
    index = (STATIC_DIR / "index.html").read_text()
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", index))
    assert not re.search(r"<style|\sstyle=|\son\w+=", index)
    for script in (STATIC_DIR / "js").glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in code, (script.name, sink)


@pytest.mark.parametrize("path", [
    "/ui/%2e%2e/http/app.py",
    "/ui/..%2fhttp%2fapp.py",
    "/ui/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/ui/js/%2e%2e/%2e%2e/settings.py",
    "/ui//etc/passwd",
    "/ui/%2fetc%2fpasswd",
    "/ui/js",
    "/ui/",
    "/ui/nope.js",
    "/ui/JS/main.js",
    "/ui/js/main.js/",
    "/ui/js/main.js%00.html",
    "/ui/__init__.py",
    "/index.html",
    "/static/index.html",
])
def test_paths_outside_the_static_files_are_404(fake, path):
    r = fake.client.get(path)
    assert r.status_code == 404, (path, r.text[:200])
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_only_regular_files_of_served_kinds_inside_the_folder_are_served(tmp_path):
    root = tmp_path / "static"
    (root / "js").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html>")
    (root / "js" / "a.js").write_text("export {};")
    (root / "js" / "inside.js").symlink_to(root / "js" / "a.js")
    (root / "notes.py").write_text("secret")
    (root / ".hidden.js").write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.js").write_text("secret")
    (root / "out.js").symlink_to(outside / "x.js")
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "gone.js").symlink_to(tmp_path / "missing.js")
    assert sorted(StaticPage(root).files) == ["index.html", "js/a.js", "js/inside.js"]
    assert StaticPage(tmp_path / "nowhere").files == {}


def test_no_ui_turns_the_page_off_and_leaves_the_api(fake_factory):
    off = fake_factory(ui=False)
    assert off.client.get("/").status_code == 404
    assert off.client.get("/ui/js/main.js").status_code == 404
    assert off.client.get("/v1/models").status_code == 200
    assert off.client.get("/status").status_code == 200


def test_the_page_is_public_and_the_api_keeps_its_key(fake_factory):
    keyed = fake_factory(api_key="k")
    assert keyed.client.get("/").status_code == 200
    assert keyed.client.get("/ui/js/main.js").status_code == 200
    assert keyed.client.get("/v1/models").status_code == 401
    assert keyed.client.get("/v1/models", headers={"authorization": "Bearer k"}).status_code == 200


# --- GET /status ----------------------------------------------------------------------------------

def test_status_has_the_panel_figures(fake):
    assert chat(fake, "SAY:twelve chars").status_code == 200  # 12 tokens from the fake model
    status = fake.client.get("/status").json()
    assert status["object"] == "status" and status["version"] and status["ready"] is True
    assert status["uptime_seconds"] >= 0
    assert status["admin"] is True  # no key configured: the admin routes are open
    assert status["model_lifecycle"] is True
    assert status["runtime_adapters"] is False  # no adapter directory: POST /v1/adapters is refused
    assert status["tokens_per_second"] > 0 and status["tokens_window_seconds"] == 30
    assert status["last_tokens_per_second"] > 0 and 0 <= status["generating_seconds"] <= 30
    [model] = status["models"]
    memory = model.pop("memory_bytes")
    assert memory > 50 * 2**20  # the estimate of the embedded model's footprint (weights, KV, buffers)
    assert status["totals"] == {"models_loaded": 1, "active_sequences": 0, "queue_depth": 0, "memory_bytes": memory,
                                "completion_tokens": 12}
    assert model == {
        "id": MODEL, "status": "loaded", "pinned": True, "expires_at": None, "error": None, "active_sequences": 0,
        "queue_depth": 0, "parallel": 4, "max_model_len": 4096, "adapters": [], "stacks": [], "prompt_cache_bytes": 0,
    }


def test_status_lists_models_not_loaded_and_when_a_loaded_one_unloads(fake_factory):
    path = str(embedded_model_path())
    models = ModelsFile(models=[ModelConfig(name="a", path=path, load="startup"),
                                ModelConfig(name="b", path=path, keep_alive="1h")])
    srv = fake_factory(models=models, load_model=lambda config: FakeEngine(config.name))
    before = {m["id"]: m for m in srv.client.get("/status").json()["models"]}
    assert before["b"]["status"] == "unloaded" and before["b"]["expires_at"] is None
    assert before["b"]["active_sequences"] == 0 and before["b"]["parallel"] is None
    assert before["a"]["status"] == "loaded" and before["a"]["pinned"] is True
    assert chat(srv, "hi", model="b").status_code == 200
    after = {m["id"]: m for m in srv.client.get("/status").json()["models"]}
    assert after["b"]["status"] == "loaded" and after["b"]["pinned"] is False
    assert after["b"]["expires_at"] > time.time() + 3000  # keep_alive 1h from its last request
    assert srv.client.get("/status").json()["totals"]["models_loaded"] == 2


def test_status_tells_when_adapters_may_be_loaded_at_runtime(fake_factory, tmp_path):
    assert fake_factory(adapter_dirs=[tmp_path]).client.get("/status").json()["runtime_adapters"] is True


def test_status_takes_the_model_list_access_and_tells_an_admin_key(fake_factory):
    keyed = fake_factory(api_key="k", admin_key="adm")
    assert keyed.client.get("/status").status_code == 401  # as /v1/models, even with /metrics open (#28)
    assert keyed.client.get("/status", headers={"authorization": "Bearer nope"}).status_code == 401
    assert keyed.client.get("/status", headers={"authorization": "Bearer k"}).json()["admin"] is False
    assert keyed.client.get("/status", headers={"authorization": "Bearer adm"}).json()["admin"] is True
    assert keyed.client.get("/status", headers={"x-api-key": "adm"}).json()["admin"] is True


def test_token_rate_is_over_the_time_tokens_were_generated_not_wall_time():
    now = [1000.0]
    rate = TokenRate(window=30, clock=lambda: now[0])
    assert rate.per_second() == 0.0 and rate.last is None and rate.generating_seconds() == 0.0
    rate.add(51, seconds=1.0)  # 50 tokens after the first in its 1 s
    assert rate.last == 50.0 and rate.per_second() == 50.0
    now[0] += 20  # 20 idle seconds do not dilute it (a 30 s wall-clock window read 1.7 here)
    rate.add(21, seconds=1.0)
    assert rate.last == 20.0 and rate.generating_seconds() == 2.0 and rate.per_second() == 35.0
    now[0] += 0.5
    rate.add(31, seconds=1.0)  # ran alongside the last one for 0.5 s: their tokens add up over the union
    assert rate.generating_seconds() == 2.5 and rate.per_second() == 100 / 2.5
    rate.add(1, seconds=0.0)  # a one-token answer has no rate of its own
    assert rate.last == 30.0 and rate.total == 104
    now[0] += 15  # the first run has left the window
    assert rate.generating_seconds() == 1.5 and rate.per_second() == 50 / 1.5
    now[0] += 100
    assert rate.per_second() == 0.0 and rate.generating_seconds() == 0.0 and rate.last == 30.0
    assert len(rate._runs) == 0
    rate.add(101, seconds=40.0)  # began before the window: the 30 s and 75 tokens inside it count
    assert rate.generating_seconds() == 30.0 and rate.per_second() == 2.5
