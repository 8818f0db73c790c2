"""Configuration: models.toml errors, flags and NOMOAT_* variables, `--model FILE`, and the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, model_path, models_toml
from support.process import run_nomoat
from wire import NO_EOS, assert_error, chat_body, metric, tokenize, wait_until

from nomoat import config
from nomoat.cli import build_parser
from nomoat.errors import ConfigError
from nomoat.settings import Settings

NOMOAT = shutil.which("nomoat", path=str(Path(sys.executable).parent)) or "nomoat"


def nomoat(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m nomoat ARGS` to completion (for commands that must exit)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOMOAT_")}
    return run_nomoat(*args, cwd=cwd, env={**clean, **(env or {})}, timeout=timeout)


def load_args(*argv: str):
    """What `nomoat ARGV` reads before it starts: argparse, then config.load (as cli.main does)."""
    args = build_parser().parse_args(argv)
    return config.load({k: v for k, v in vars(args).items() if k != "command" and v is not None})


@pytest.fixture(autouse=True)
def no_nomoat_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("NOMOAT_")]:
        monkeypatch.delenv(key)


# --- invalid configuration: a clear error before anything starts --------------------------

MODEL = '[[models]]\nname = "m"\npath = "embedded:smollm2-135m"\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[[models]\nname = 'm'\n", ["not valid TOML", "line 1"]),
        (MODEL + "bogus = 1\n", ["models.0.bogus", "unknown key"]),
        (MODEL + 'n_ctx = "big"\n', ["models.0.n_ctx", "valid integer", "'big'"]),
        (MODEL + "parallel = 0\n", ["models.0.parallel", "greater than or equal to 1"]),
        ('[[models]]\nname = "m"\npath = "missing.gguf"\n', ["models.0.path", "model file not found", "missing.gguf"]),
        ('[[models]]\nname = "has space"\n', ["models.0.name", "whitespace"]),
        (MODEL + MODEL, ["'m' is used twice"]),
        ('default_model = "other"\n' + MODEL, ["default_model 'other' names no model"]),
        ("models = []\n", ["models", "at least 1 item"]),
        ("[server]\nport = 1\n", ["models", "Field required"]),
        ("[server]\nbogus = 1\n" + MODEL, ["server: bogus: unknown key"]),
        ('[server]\nqueue_size = "many"\n' + MODEL, ["server: queue_size", "valid integer", "'many'"]),
        ("server = 5\n" + MODEL, ["server: must be a table"]),
        ("toplevel = 1\n" + MODEL, ["toplevel: unknown key"]),
    ],
    ids=["toml-syntax", "unknown-key", "wrong-type", "out-of-range", "missing-gguf", "bad-id", "duplicate-id",
         "bad-default", "no-models", "models-missing", "unknown-setting", "setting-type", "server-not-table",
         "unknown-top-level"],
)
def test_invalid_config_is_refused_naming_file_key_and_problem(tmp_path, text, expected):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_args("serve", "--config", str(path))
    message = str(error.value)
    assert "broken.toml" in message
    for fragment in expected:
        assert fragment in message


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--config", "nowhere.toml"], {}, ["nowhere.toml", "config file not found"]),
        (["--config", "."], {}, ["is a directory"]),
        (["--port", "70000"], {}, ["--port", "less than or equal to 65535"]),
        (["--queue-size", "-1"], {}, ["--queue-size", "greater than or equal to 0"]),
        ([], {"NOMOAT_PORT": "abc"}, ["NOMOAT_PORT", "valid integer", "'abc'"]),
        ([], {"NOMOAT_LOG_LEVEL": "loud"}, ["NOMOAT_LOG_LEVEL", "'loud'"]),
        ([], {"NOMOAT_CONFIG": "gone.toml"}, ["gone.toml", "config file not found"]),
        (["--model", "nothing.gguf"], {}, ["--model", "model file not found", "nothing.gguf"]),
    ],
    ids=["missing-file", "directory", "flag-range", "flag-negative", "env-type", "env-choice", "env-config",
         "missing-model"],
)
def test_invalid_flags_and_variables_are_refused(tmp_path, monkeypatch, args, env, expected):
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as error:
        load_args("serve", *args)
    for fragment in expected:
        assert fragment in str(error.value)


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--config", "broken.toml"], {}, ["broken.toml", "models.0.n_ctx", "valid integer"]),
        ([], {"NOMOAT_PORT": "abc"}, ["NOMOAT_PORT", "valid integer"]),
    ],
    ids=["file", "variable"],
)
def test_serve_exits_2_before_starting_on_a_bad_config(tmp_path, args, env, expected):
    (tmp_path / "broken.toml").write_text(MODEL + 'n_ctx = "big"\n')
    # --port: were the config accepted by mistake, the server would start here, not on :8000.
    port = [] if env else ["--port", str(free_port())]
    result = nomoat("serve", *args, *port, cwd=tmp_path, env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("nomoat: configuration error:")
    for fragment in expected:
        assert fragment in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    result = nomoat("serve", "--model", str(fake), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert "fake.gguf" in result.stderr and "could not load" in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_flag_with_a_bad_type_is_a_usage_error(tmp_path):
    result = nomoat("serve", "--port", "abc", cwd=tmp_path)
    assert result.returncode == 2
    assert "--port" in result.stderr and "invalid int value" in result.stderr


# --- precedence and lookup (in process: config.load is what `serve` runs first) ---------------


def test_flags_beat_variables_beat_the_file(tmp_path, monkeypatch):
    path = tmp_path / "models.toml"
    path.write_text('[server]\nport = 1111\nhost = "0.0.0.0"\nqueue_size = 3\n' + MODEL)
    monkeypatch.setenv("NOMOAT_PORT", "2222")
    monkeypatch.setenv("NOMOAT_QUEUE_SIZE", "5")
    settings, _ = config.load({"config": path, "port": 3333})
    assert (settings.port, settings.queue_size, settings.host) == (3333, 5, "0.0.0.0")
    settings, _ = config.load({"config": path})
    assert (settings.port, settings.queue_size) == (2222, 5)
    monkeypatch.delenv("NOMOAT_PORT")
    monkeypatch.delenv("NOMOAT_QUEUE_SIZE")
    settings, models = config.load({"config": path})
    assert (settings.port, settings.queue_size) == (1111, 3)
    assert [m.name for m in models.models] == ["m"]


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    settings = Settings.load({}, {}, "test")
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8000, "info")


def test_config_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    if Path("/etc/nomoat/models.toml").exists():
        pytest.skip("this machine has a system-wide /etc/nomoat/models.toml")
    # Nothing anywhere: the embedded model alone.
    _, models = config.load({})
    assert [m.name for m in models.models] == ["smollm2-135m"]
    assert Path(models.models[0].path) == config.embedded_model_path()
    # $XDG_CONFIG_HOME/nomoat/models.toml, then ./models.toml ahead of it.
    (xdg / "nomoat").mkdir(parents=True)
    (xdg / "nomoat" / "models.toml").write_text(MODEL.replace('"m"', '"from-xdg"'))
    assert [m.name for m in config.load({})[1].models] == ["from-xdg"]
    (tmp_path / "models.toml").write_text(MODEL.replace('"m"', '"from-cwd"'))
    assert [m.name for m in config.load({})[1].models] == ["from-cwd"]
    monkeypatch.setenv("NOMOAT_CONFIG", str(xdg / "nomoat" / "models.toml"))
    assert [m.name for m in config.load({})[1].models] == ["from-xdg"]


def test_model_file_mode_ignores_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.toml").write_text(MODEL)
    _, models = config.load({"model": config.embedded_model_path(), "n_ctx": 512})
    [only] = models.models
    assert only.name == "SmolLM2-135M-Instruct.Q4_1" and only.n_ctx == 512
    assert Path(only.path) == config.embedded_model_path()
    _, models = config.load({"model": config.embedded_model_path(), "model_name": "tiny"})
    assert [m.name for m in models.models] == ["tiny"]


def test_model_file_mode_names_a_symlink_by_its_own_name(tmp_path, monkeypatch):
    """As in the Hugging Face cache: snapshots/REV/NAME.gguf links to blobs/SHA256. The id is the name given."""
    monkeypatch.chdir(tmp_path)
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"GGUF")  # naming reads no header: the model loads when the server starts
    snapshot = tmp_path / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    for link, name in [("Tiny-Q8_0.gguf", "Tiny-Q8_0"), ("big-00001-of-00002.gguf", "big"), ("weights.bin", "weights.bin")]:
        (snapshot / link).symlink_to(blob)
        [only] = config.load({"model": snapshot / link})[1].models
        assert (only.name, Path(only.path)) == (name, blob)
    [embedded] = config.load({"model": "embedded:smollm2-135m"})[1].models
    assert embedded.name == "SmolLM2-135M-Instruct.Q4_1"


# --- real servers configured by flags and variables -----------------------------------------------


def test_model_file_mode_serves_one_gguf(start_server, tmp_path):
    link = tmp_path / "snapshot" / "tiny.gguf"  # a symlink is served under its own name (as in the HF cache)
    link.parent.mkdir()
    link.symlink_to(model_path())
    srv = start_server("this file is ignored with --model: [[[ not toml", "--model", str(link),
                       "--n-ctx", "256", "--parallel", "1")
    with httpx.Client(base_url=srv.base_url, timeout=120) as client:
        cards = client.get("/v1/models").json()["data"]
        assert [(c["id"], c["max_model_len"]) for c in cards] == [("tiny", 256)]
        answer = client.post("/v1/chat/completions", json=chat_body("Hi", model="tiny", max_tokens=4))
        assert answer.status_code == 200 and answer.json()["model"] == "tiny"
        assert answer.json()["choices"][0]["message"]["content"]
        # --n-ctx took effect: 300 tokens no longer fit, and 250 leave room for exactly 6 more.
        r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello " * 300, "max_tokens": 2})
        assert_error(r, 400, code="context_length_exceeded")
        full = {"model": "tiny", "prompt": tokenize(" hello") * 250, "max_tokens": 100, "logit_bias": NO_EOS}
        answer = client.post("/v1/completions", json=full).json()
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 6 and answer["usage"]["total_tokens"] == 256


TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def env_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server configured by NOMOAT_* variables alone (port, host, config, body limit, log level),
    its file setting a chat template and parallel = 4, which `--parallel 1 --queue-size 0` override."""
    tmp_path = tmp_path_factory.mktemp("env-server")
    port = free_port()
    cfg = tmp_path / "elsewhere.toml"
    # Only the contents, no ChatML: "Hi" is then a one-token prompt.
    cfg.write_text(models_toml("env-model", parallel=4, extra=f"chat_template = {TEMPLATE!r}"))
    env = {"NOMOAT_PORT": str(port), "NOMOAT_HOST": "127.0.0.1", "NOMOAT_CONFIG": str(cfg),
           "NOMOAT_MAX_BODY_BYTES": "2048", "NOMOAT_LOG_LEVEL": "warning"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOMOAT_")}
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nomoat", "serve", "--parallel", "1", "--queue-size", "0"],
                                cwd=tmp_path, env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}"
            assert wait_until(lambda: proc.poll() is not None or _healthy(base_url))
            assert proc.poll() is None, log_path.read_text()
            yield base_url
        finally:
            proc.terminate()
            proc.wait(30)
    # NOMOAT_LOG_LEVEL=warning: no per-request info lines.
    assert "POST /v1/chat/completions" not in log_path.read_text()


def test_environment_variables_configure_a_server(env_server):
    with httpx.Client(base_url=env_server, timeout=120) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["env-model", "default"]
        r = client.post("/v1/chat/completions", json=chat_body("x" * 3000, model="env-model", max_tokens=2))
        assert_error(r, 413, code="request_too_large")
        assert_serves_model(client, "env-model")


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def assert_serves_model(client: httpx.Client, model: str) -> None:
    r = client.post("/v1/chat/completions", json=chat_body("Hi", model=model, max_tokens=3, logit_bias=NO_EOS))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] and choice["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3


def test_chat_template_override(env_server, tmp_path):
    with httpx.Client(base_url=env_server, timeout=120) as client:
        r = client.post("/v1/chat/completions", json=chat_body("Hi", model="env-model", max_tokens=2))
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(tokenize("Hi")) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text(models_toml(parallel=1, extra="chat_template = '{% for m in messages %}'"))
    result = nomoat("serve", "--config", str(broken), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert "broken.toml: models.0.chat_template" in result.stderr and "not valid Jinja" in result.stderr
    assert "Uvicorn running" not in result.stderr


def test_parallel_flag_overrides_the_file(env_server):
    with httpx.Client(base_url=env_server, timeout=120) as client, \
            client.stream("POST", "/v1/chat/completions",
                          json=chat_body(model="env-model", max_tokens=1000, logit_bias=NO_EOS, stream=True)) as holder:
        held = holder.iter_lines()  # keep it: a dropped line iterator closes the response
        next(held)
        # One slot and no queue: a second request is turned away (with parallel = 4 it would run).
        assert_error(client.post("/v1/chat/completions", json=chat_body("Hi", model="env-model", max_tokens=2)), 429,
                     type_="rate_limit_error")
    with httpx.Client(base_url=env_server, timeout=120) as client:
        assert wait_until(lambda: metric(client.get("/metrics").text, "nomoat_active_sequences", model="env-model") == 0)
        assert_serves_model(client, "env-model")


# --- the command line itself ------------------------------------------------------------------------


def test_top_level_help_names_the_commands():
    for argv in ([NOMOAT, "--help"], [sys.executable, "-m", "nomoat", "--help"]):  # bare: test_cli_help.py
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "serve" in result.stdout and "usage: nomoat" in result.stdout


def test_serve_help_documents_every_setting():
    result = subprocess.run([NOMOAT, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for name, field in Settings.model_fields.items():
        if field.validation_alias is not None or name == "rpc_in_process":
            continue  # systemd's own variables (NOTIFY_SOCKET...), and the flag nomoat passes its child: not options
        assert "--" + name.replace("_", "-") in text, name
        assert f"NOMOAT_{name.upper()}" in text, name
        assert field.description and " ".join(field.description.split())[:30] in text, name


def test_version():
    result = subprocess.run([NOMOAT, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("nomoat ")
