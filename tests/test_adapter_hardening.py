"""Hostile adapter files and paths (issue #19): each is refused with a clear 4xx, quickly, and the server serves on.

Through the API the refusals run in process (`fake_api`); one real server keeps a FIFO refusal
followed by a real adapter load.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, models_toml
from lora_factory import write_lora
from peft_factory import write_peft_adapter
from wire import assert_error, assert_serves

from nomoat import config
from nomoat.adapters.files import check_adapter_gguf, confine
from nomoat.adapters.peft import validate_peft_dir
from nomoat.adapters.watch import peft_readiness
from nomoat.cli import build_parser
from nomoat.engine.base_info import BaseModelInfo
from nomoat.errors import AdapterError, ConfigError, InvalidRequestError

# Generous: these must not hang, but the machine may be loaded; no test asserts a tight timing.
PROBE_TIMEOUT = 60
MEMORY_CAP = 4 << 30


def gguf_bomb(path: Path) -> Path:
    """169 bytes: a valid LoRA adapter header whose last key is an array claiming 2**62 uint8 items."""
    def string(value: bytes) -> bytes:
        return struct.pack("<Q", len(value)) + value

    def kv_string(key: bytes, value: bytes) -> bytes:
        return string(key) + struct.pack("<I", 8) + string(value)

    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 4)
    data += kv_string(b"general.architecture", b"llama") + kv_string(b"general.type", b"adapter")
    data += kv_string(b"adapter.type", b"lora")
    data += string(b"x") + struct.pack("<IIQ", 9, 0, 2**62)  # ARRAY of UINT8, 2**62 items
    path.write_bytes(data)
    return path


def probe(calls: dict[str, str], **args: Path) -> dict[str, dict[str, str]]:
    """Run each of `calls` (expressions over `args` and `base`) in one fresh interpreter, memory capped.

    Before the fixes these calls wedge or eat memory without end; run apart, a regression fails
    this test (timeout, MemoryError) instead of taking the test process and the machine with it.
    Each call gives {"refused": message} for an AdapterError, else {"result": repr of its value}.
    """
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from nomoat.errors import AdapterError
        from nomoat.adapters.files import check_adapter_gguf
        from nomoat.adapters.peft import validate_peft_dir
        from nomoat.adapters.watch import gguf_readiness, peft_readiness
        from nomoat.engine.base_info import BaseModelInfo
        from nomoat.config import embedded_model_path
        args = {{k: Path(v) for k, v in json.loads(sys.argv[1]).items()}}
        if {"base" in "".join(calls.values())}:
            base = BaseModelInfo.from_gguf(embedded_model_path())
        outcomes = {{}}
        for name, call in {calls!r}.items():
            try:
                outcomes[name] = {{"result": repr(eval(call))}}
            except AdapterError as exc:
                outcomes[name] = {{"refused": exc.message}}
        print(json.dumps(outcomes))
    """)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    done = subprocess.run([sys.executable, "-c", code, json.dumps({k: str(v) for k, v in args.items()})],
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT, preexec_fn=cap_memory)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def base() -> BaseModelInfo:
    return BaseModelInfo.from_gguf(config.embedded_model_path())


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile-adapters")
    write_lora(d / "good.gguf", seed=1)
    return d


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory, adapter_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(models_toml(), tmp_path_factory.mktemp("hostile-server"),
                         "--adapter-dir", str(adapter_dir)).wait_ready()
    yield proc
    proc.close()


@pytest.fixture()
def api(hostile_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_server.base_url, timeout=PROBE_TIMEOUT) as c:
        yield c


@pytest.fixture()
def fake_api(fake_factory: Any, base: BaseModelInfo, tmp_path: Path) -> httpx.Client:
    """The in-process app over the fake engine, adapter directory `tmp_path`: POST /v1/adapters runs the
    same confinement and file checks as a real server's; only a load that passes them reaches the engine."""
    srv = fake_factory(adapter_dirs=[tmp_path])
    srv.engine.model.base_info = lambda: base
    return srv.client


def refusals_go_on(api: httpx.Client) -> None:
    """After a refusal the adapter routes are free (another refusal is answered) and chats are served."""
    assert_error(api.post("/v1/adapters", json={"name": "again", "path": "absent.gguf"}), 400,
                 code="adapter_not_found", param="path")
    assert_serves(api)


def load_works(api: httpx.Client, name: str) -> None:
    """A normal adapter still loads and serves, then is unloaded again."""
    r = api.post("/v1/adapters", json={"name": name, "path": "good.gguf"})
    assert r.status_code == 201, r.text
    r = api.post("/v1/chat/completions", json={"model": name, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text
    assert api.delete(f"/v1/adapters/{name}").status_code == 200


# 1. A GGUF header whose counts lie.

def test_gguf_array_claiming_2_62_items_is_refused_before_gguf_reads_it(tmp_path: Path) -> None:
    bomb = gguf_bomb(tmp_path / "bomb.gguf")
    assert bomb.stat().st_size == 169
    outcome = probe({"check": "check_adapter_gguf(args['bomb'], base)",
                     "readiness": "gguf_readiness(args['bomb']).state"}, bomb=bomb)
    assert str(bomb) in outcome["check"]["refused"] and str(2**62) in outcome["check"]["refused"]
    assert outcome["readiness"] == {"result": "'bad'"}


def test_gguf_bomb_through_the_api_is_a_400_and_the_server_serves_on(fake_api: httpx.Client, tmp_path: Path) -> None:
    bomb = gguf_bomb(tmp_path / "bomb.gguf")
    error = assert_error(fake_api.post("/v1/adapters", json={"name": "bomb", "path": "bomb.gguf"}), 400,
                         code="invalid_adapter", param="path")
    assert str(bomb.resolve()) in error["message"]
    refusals_go_on(fake_api)


@pytest.mark.parametrize("cut", [2, 12, 30, 600, -1])
def test_cut_gguf_files_are_refused_as_incomplete(tmp_path: Path, base: BaseModelInfo, cut: int) -> None:
    whole = write_lora(tmp_path / "whole.gguf", seed=3).read_bytes()
    cut_file = tmp_path / "cut.gguf"
    cut_file.write_bytes(whole[:cut])
    with pytest.raises(AdapterError) as refused:
        check_adapter_gguf(cut_file, base)
    assert str(cut_file) in refused.value.message and "not a complete GGUF file" in refused.value.message


# 2. Regular expressions in a PEFT config that backtrack without end.

@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_catastrophic_pattern_key_is_matched_in_bounded_time(tmp_path: Path, base: BaseModelInfo,
                                                            field: str) -> None:
    """With Python's re this takes hours; matched as PEFT means it, "(.+)+Z" matches no module."""
    peft = write_peft_adapter(tmp_path / "peft", base, layers=[0], config_overrides={field: {"(.+)+Z": 4}}).path
    outcome = probe({"validate": "len(validate_peft_dir(args['peft'], base).modules)"}, peft=peft)["validate"]
    assert outcome.get("result") == "7" or "(.+)+Z" in outcome.get("refused", ""), outcome


def test_pattern_key_that_times_out_is_refused_naming_it(tmp_path: Path, base: BaseModelInfo) -> None:
    key = r"(.+)(.+)(.+)(.+)(.+)(.+)(.+)(.+)(.+)\9\9"  # backreferences: slow even for the regex package
    peft = write_peft_adapter(tmp_path / "peft", base, layers=[0], config_overrides={"rank_pattern": {key: 4}}).path
    refused = probe({"validate": "validate_peft_dir(args['peft'], base)"}, peft=peft)["validate"]["refused"]
    assert "rank_pattern" in refused and repr(key) in refused and "too long" in refused


# 3. FIFOs where adapter files should be.

def test_fifo_adapter_is_refused_without_blocking_and_loads_go_on(api: httpx.Client, adapter_dir: Path) -> None:
    """On a real server: a FIFO that blocked a thread would stall the real adapter load after it.
    (The other refusals through the API run in process: the checks come before the engine.)"""
    os.mkfifo(adapter_dir / "fifo.gguf")
    error = assert_error(api.post("/v1/adapters", json={"name": "fifo", "path": "fifo.gguf"}), 400,
                         code="invalid_adapter", param="path")
    assert "fifo.gguf" in error["message"] and "FIFO" in error["message"]
    load_works(api, "after-fifo")


def test_fifo_in_peft_dir_is_bad_for_readiness_and_refused(tmp_path: Path, base: BaseModelInfo) -> None:
    config_fifo = tmp_path / "config-fifo"
    config_fifo.mkdir()
    os.mkfifo(config_fifo / "adapter_config.json")
    weights_fifo = write_peft_adapter(tmp_path / "weights-fifo", base, layers=[0]).path
    (weights_fifo / "adapter_model.safetensors").unlink()
    os.mkfifo(weights_fifo / "adapter_model.safetensors")
    outcome = probe({"config": "peft_readiness(args['config']).state",
                     "weights": "peft_readiness(args['weights']).state",
                     "validate": "validate_peft_dir(args['weights'], base)"},
                    config=config_fifo, weights=weights_fifo)
    assert outcome["config"] == outcome["weights"] == {"result": "'bad'"}
    assert "regular file" in outcome["validate"]["refused"]


def test_fifo_gguf_is_bad_for_readiness(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.gguf")
    outcome = probe({"readiness": "gguf_readiness(args['fifo']).state"}, fifo=tmp_path / "fifo.gguf")
    assert outcome["readiness"] == {"result": "'bad'"}


# 4. `~` in paths.

@pytest.fixture()
def no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """As under systemd's DynamicUser without a passwd entry: no HOME, and getpwuid knows no one."""
    def unknown(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", unknown)


@pytest.mark.parametrize("path", ["~nosuchuser/x.gguf", "~/x.gguf"])
def test_confine_takes_a_tilde_literally(tmp_path: Path, no_home: None, path: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        confine(path, [tmp_path])
    assert refused.value.code == "adapter_not_found"
    (tmp_path / path).parent.mkdir()
    (tmp_path / path).write_bytes(b"")
    assert confine(path, [tmp_path]) == (tmp_path / path).resolve()


def test_tilde_user_path_through_the_api_is_a_400(fake_api: httpx.Client) -> None:
    assert_error(fake_api.post("/v1/adapters", json={"name": "tilde", "path": "~nosuchuser/x.gguf"}), 400,
                 code="adapter_not_found", param="path")
    refusals_go_on(fake_api)


@pytest.mark.parametrize("path", ["~nosuchuser/m.gguf", "~/m.gguf"])
def test_models_toml_tilde_without_a_home_is_a_config_error(tmp_path: Path, no_home: None, path: str) -> None:
    for data in ({"models": [{"name": "m", "path": path}]},
                 {"models": [{"name": "m"}], "adapters": [{"name": "a", "path": path}]}):
        with pytest.raises(ConfigError, match="home directory is unknown"):
            config.parse_models(data, "models.toml", tmp_path)


def test_config_search_without_a_home_skips_the_user_config(tmp_path: Path, no_home: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    found = config.find_config_file(None)
    assert found is None or found == Path("/etc/nomoat/models.toml")


# 5. adapter_config.json nested beyond the recursion limit.

def test_deeply_nested_adapter_config_is_refused(tmp_path: Path, base: BaseModelInfo) -> None:
    peft = write_peft_adapter(tmp_path / "peft", base, layers=[0]).path
    (peft / "adapter_config.json").write_text("[" * 200_000)
    with pytest.raises(AdapterError, match="nested too deeply") as refused:
        validate_peft_dir(peft, base)
    assert str(peft / "adapter_config.json") in refused.value.message
    assert peft_readiness(peft).state == "bad"


def test_deeply_nested_adapter_config_through_the_api_is_a_400(fake_api: httpx.Client, tmp_path: Path) -> None:
    deep = tmp_path / "deep-peft"
    deep.mkdir()
    (deep / "adapter_config.json").write_text("[" * 200_000)
    (deep / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    error = assert_error(fake_api.post("/v1/adapters", json={"name": "deep", "path": "deep-peft"}), 400,
                         code="invalid_adapter")
    assert "nested too deeply" in error["message"]
    refusals_go_on(fake_api)


# 6. A GGUF adapter whose alpha is not a finite number.

@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gguf_alpha_is_refused(tmp_path: Path, base: BaseModelInfo, alpha: float) -> None:
    path = write_lora(tmp_path / "alpha.gguf", seed=4, alpha=alpha)
    with pytest.raises(AdapterError, match=r"adapter\.lora\.alpha") as refused:
        check_adapter_gguf(path, base)
    assert str(path) in refused.value.message


# 7. The flag README.md and docs/adapters.md name.

def test_adapter_dir_is_a_flag_of_its_own_beside_adapter_dirs(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--adapter-dir", "/a", "--adapter-dirs", "/b", "--adapter-dir", "/c"])
    assert args.adapter_dirs == ["/a", "/b", "/c"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    # Listed, not merely accepted as an abbreviation that any new --adapter-dir... flag would break.
    assert "--adapter-dir ADAPTER_DIRS" in capsys.readouterr().out
