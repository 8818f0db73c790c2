"""The command line's help and errors say what to do: llama-server's short flags, NOMOAT_HOST, bare `nomoat`,
each command's own help, "did you mean", a 401 naming the key, and Ctrl+C on `nomoat worker`."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import model_path
from support.process import free_port, run_nomoat

from nomoat import config
from nomoat.cli import build_parser
from nomoat.errors import ConfigError
from nomoat.residency.ps import ps
from nomoat.rpc.ggml import supports_rpc
from nomoat.settings import Settings


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NOMOAT_")}


def test_bare_nomoat_prints_the_help_and_exits_2():
    done = run_nomoat(env=_env())
    assert done.returncode == 2 and "serve" in done.stderr and "run" in done.stderr


def test_llama_servers_short_flags_mean_the_same():
    args = build_parser().parse_args(["serve", "-m", "x.gguf", "-c", "512", "-ngl", "0", "-np", "2", "-t", "3",
                                      "-a", "mine", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.model, args.n_ctx, args.n_gpu_layers, args.parallel, args.threads, args.model_name) == (
        "x.gguf", 512, "0", 2, 3, "mine")
    assert build_parser().parse_args(["serve", "--alias", "mine"]).model_name == "mine"


@pytest.mark.parametrize(("host", "port", "url"), [
    ("box:9000", None, "http://box:9000"),
    ("http://box", None, "http://box:80"),
    ("https://box:8443", None, "https://box:8443"),
    ("[::1]:9000", None, "http://[::1]:9000"),
    ("0.0.0.0", None, "http://127.0.0.1:8000"),
    ("box:9000", 7000, "http://box:7000"),  # --port wins, as its own flag
])
def test_nomoat_host_is_a_host_a_host_and_port_or_a_url(monkeypatch, host, port, url):
    monkeypatch.setenv("NOMOAT_HOST", host)
    cli = {} if port is None else {"port": port}
    assert Settings.load(cli, {"port": 8000}, "models.toml: server").client_url() == url


def test_serve_help_shows_defaults_and_hides_the_internal_flag():
    done = run_nomoat("serve", "--help", env=_env())
    assert done.returncode == 0
    assert "PydanticUndefined" not in done.stdout and "--rpc-in-process" not in done.stdout
    assert "-ngl N_GPU_LAYERS" in done.stdout and "--alias" in done.stdout


def test_client_and_store_commands_have_help_of_their_own():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "ps" in a.choices).choices  # type: ignore[operator]
    ps_help = sub["ps"].format_help()
    assert "NOMOAT_API_KEY" in ps_help and "OLLAMA_HOST" in ps_help
    for command in ("pull", "ls", "rm"):
        assert "Serve every GGUF" not in sub[command].format_help()


def test_an_unknown_key_suggests_the_known_one(tmp_path: Path):
    file = tmp_path / "models.toml"
    file.write_text(f'[server]\nprot = 8000\n[[models]]\nname = "m"\npath = "{model_path()}"\nn_cxt = 512\n')
    with pytest.raises(ConfigError) as raised:
        config.load({"config": file})
    assert "server: prot: unknown key (did you mean 'port'?)" in str(raised.value)
    file.write_text(f'[[models]]\nname = "m"\npath = "{model_path()}"\nn_cxt = 512\n')
    with pytest.raises(ConfigError) as raised:
        config.load({"config": file})
    assert "models.0.n_cxt: unknown key (did you mean 'n_ctx'?)" in str(raised.value)


def test_a_stack_naming_an_unknown_adapter_says_so_in_one_line(tmp_path: Path):
    file = tmp_path / "models.toml"
    file.write_text(f'[[models]]\nname = "m"\npath = "{model_path()}"\n'
                    f'[[adapters]]\nname = "a"\npath = "{model_path()}"\n'
                    '[[stacks]]\nname = "s"\nadapters = { nope = 1.0 }\n')
    with pytest.raises(ConfigError) as raised:
        config.load({"config": file})
    message = str(raised.value)
    assert "stack 's': adapter 'nope' is not declared in [[adapters]] (adapters: a)" in message
    assert len(message.splitlines()) == 1 and "got" not in message


def test_model_given_a_directory_suggests_models_dir(tmp_path: Path):
    done = run_nomoat("serve", "-m", str(tmp_path), env=_env())
    assert done.returncode == 2 and f"--models-dir {tmp_path}" in done.stderr


@pytest.fixture()
def keyed_stand_in() -> Iterator[int]:
    """A server that answers every request 401, as a nomoat started with keys answers a request without one."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(401, "Unauthorized")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_ps_refused_for_want_of_a_key_names_the_flag_and_variable(keyed_stand_in):
    code, text = ps(Settings(port=keyed_stand_in))
    assert code == 1 and "401" in text and "--api-key" in text and "NOMOAT_API_KEY" in text


@pytest.mark.skipif(not supports_rpc(), reason="this llama-cpp-python has no RPC backend")
def test_ctrl_c_ends_the_worker_quietly_with_130():
    worker = subprocess.Popen([sys.executable, "-m", "nomoat", "worker", "--port", str(free_port())],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    assert worker.stderr is not None
    assert "serving this machine's CPU" in worker.stderr.readline()
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130 and "Traceback" not in err, err
