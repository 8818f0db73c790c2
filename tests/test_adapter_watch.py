"""Drop-in adapter directories (--watch-adapters) through the real server: appear, disappear, half-written, bad."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, model_path, models_toml
from lora_factory import write_lora
from peft_factory import write_peft_adapter

from nomoat.adapters.watch import gguf_readiness, peft_readiness
from nomoat.engine.base_info import BaseModelInfo

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
STD = 0.12  # each adapter changes the first tokens, so outputs tell adapters apart at once


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapters written outside the watched directory, to be copied in."""
    d = tmp_path_factory.mktemp("staging")
    write_lora(d / "a.gguf", seed=1, std=STD)
    write_lora(d / "b.gguf", seed=2, std=STD)
    write_peft_adapter(d / "peft", BaseModelInfo.from_gguf(model_path()), r=4, lora_alpha=8.0, seed=3)
    return d


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, staging: Path) -> Path:
    d = tmp_path_factory.mktemp("watched")
    shutil.copy(staging / "a.gguf", d / "pre.gguf")  # there before the server starts
    shutil.copy(staging / "b.gguf", d / "cfg.gguf")  # also named in models.toml
    return d


@pytest.fixture(scope="module")
def watch_server(tmp_path_factory, staging, watched):
    extra = "".join(f'[[adapters]]\nname = "{name}"\npath = "{path}"\n' for name, path in [
        ("ref-a", staging / "a.gguf"), ("ref-b", staging / "b.gguf"), ("ref-peft", staging / "peft"),
        ("from-config", watched / "cfg.gguf"),
    ])
    # Copies of one file share a content hash, so with the prefix cache a request could reuse KV computed
    # for another id in another batch shape; off, every answer below is computed exactly alike.
    extra = "prefix_cache = false\n" + extra
    tmp = tmp_path_factory.mktemp("watch-server")
    proc = ServerProcess(models_toml(extra=extra), tmp, "--adapter-dir", str(watched), "--watch-adapters",
                         "--state-dir", str(tmp / "state")).wait_ready()
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def outputs(watch_server) -> dict[str, str]:
    """Greedy answers of the reference adapters, loaded from models.toml outside the watched directory."""
    out = {name: chat(watch_server.base_url, name).json()["choices"][0]["message"]["content"]
           for name in ("smollm2-135m", "ref-a", "ref-b", "ref-peft")}
    assert len(set(out.values())) == 4
    return out


def chat(url: str, model: str, max_tokens: int = 16) -> httpx.Response:
    body = {"model": model, "messages": POEM, "temperature": 0, "max_tokens": max_tokens}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=600)


def answer(url: str, model: str) -> str:
    r = chat(url, model)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def adapters(url: str) -> dict[str, dict]:
    return {a["id"]: a for a in httpx.get(url + "/v1/adapters").json()["data"]}


def model_ids(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}


def wait_for(condition: Callable[[], bool], timeout: float = 300.0) -> float:
    """Seconds until `condition()` held; fails after `timeout`, a guard against a hang, not a speed goal.

    How fast the watcher picks a file up is measured by bench/bench_watch.py, not here: on a loaded
    two-core machine any tight bound fails now and then.
    """
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_adapters_present_at_startup_are_served_and_config_ones_not_doubled(watch_server, outputs):
    url = watch_server.base_url
    wait_for(lambda: "pre" in adapters(url))
    assert adapters(url)["pre"]["origin"] == "watch"
    assert answer(url, "pre") == outputs["ref-a"]
    assert "cfg" not in model_ids(url), "cfg.gguf is already served as from-config"
    assert "already served as 'from-config'" in watch_server.log()


def test_copied_gguf_is_served_and_deleting_it_unloads(watch_server, staging, watched, outputs):
    url = watch_server.base_url
    shutil.copy(staging / "a.gguf", watched / "drop.gguf")
    wait_for(lambda: chat(url, "drop", max_tokens=1).status_code == 200)
    assert answer(url, "drop") == outputs["ref-a"]
    (watched / "drop.gguf").unlink()
    wait_for(lambda: "drop" not in model_ids(url))
    assert chat(url, "drop").status_code == 404


def test_copied_peft_directory_is_converted_served_and_unloaded(watch_server, staging, watched, outputs):
    url = watch_server.base_url
    shutil.copytree(staging / "peft", watched / "peft-drop")
    wait_for(lambda: chat(url, "peft-drop", max_tokens=1).status_code == 200)
    assert answer(url, "peft-drop") == outputs["ref-peft"]
    shutil.rmtree(watched / "peft-drop")
    wait_for(lambda: "peft-drop" not in model_ids(url))


def test_replaced_file_is_reloaded_with_its_new_content(watch_server, staging, watched, outputs):
    url = watch_server.base_url
    shutil.copy(staging / "a.gguf", watched / "swap.gguf")
    wait_for(lambda: "swap" in adapters(url))
    assert answer(url, "swap") == outputs["ref-a"]
    shutil.copy(staging / "b.gguf", watched / ".swap.tmp")  # hidden: ignored until renamed
    os.replace(watched / ".swap.tmp", watched / "swap.gguf")
    # Every answer on the way is the old content or the new one, never a 404 (answer() asserts a 200).
    wait_for(lambda: answer(url, "swap") == outputs["ref-b"])
    assert "changed on disk, replaced" in watch_server.log()
    (watched / "swap.gguf").unlink()
    wait_for(lambda: "swap" not in model_ids(url))


def test_replace_under_steady_polling_never_answers_404(watch_server, staging, watched):
    """Clients polling the adapter while its file is replaced see the old answer, then the new one."""
    url, name = watch_server.base_url, "hot"
    first_words = {ref: chat(url, ref, max_tokens=3).json()["choices"][0]["message"]["content"]
                   for ref in ("ref-a", "ref-b")}
    assert first_words["ref-a"] != first_words["ref-b"]
    shutil.copy(staging / "a.gguf", watched / f"{name}.gguf")
    wait_for(lambda: name in adapters(url))
    seen: list[tuple[int, str]] = []
    done = threading.Event()  # set by the first poller to see the new content (or a failure)

    def poll() -> None:
        for _ in range(500):
            if done.is_set():
                return
            r = chat(url, name, max_tokens=3)
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
            seen.append((r.status_code, text))
            if r.status_code != 200 or text == first_words["ref-b"]:
                done.set()

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(3)]
    for thread in pollers:
        thread.start()
    wait_for(lambda: len(seen) >= 3)
    shutil.copy(staging / "b.gguf", watched / f".{name}.tmp")
    os.replace(watched / f".{name}.tmp", watched / f"{name}.gguf")
    done.wait(600)
    done.set()  # stops the pollers should the new content never come
    for thread in pollers:
        thread.join(300)
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    assert {text for _, text in seen} == set(first_words.values()), \
        [line for line in watch_server.log().splitlines() if name in line and "POST" not in line]
    assert answer(url, name).startswith(first_words["ref-b"])
    (watched / f"{name}.gguf").unlink()
    wait_for(lambda: name not in model_ids(url))


def _write_slowly(path: Path, data: bytes, pieces: int, pause: float, url: str, name: str) -> None:
    """Write `data` in pieces, pausing longer than the watcher's settle time; the adapter must never appear."""
    step = len(data) // pieces + 1
    with path.open("wb") as out:
        for i in range(0, len(data), step):
            if i:
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline:
                    assert name not in adapters(url), f"{name} loaded with {i} of {len(data)} bytes written"
                    time.sleep(0.1)
            out.write(data[i:i + step])
            out.flush()


@pytest.mark.parametrize("kind", ["gguf", "peft"])
def test_slowly_written_adapter_is_never_loaded_half_way(watch_server, staging, watched, outputs, kind):
    url, name = watch_server.base_url, f"slow-{kind}"
    if kind == "gguf":
        target, expected = watched / f"{name}.gguf", outputs["ref-b"]
        _write_slowly(target, (staging / "b.gguf").read_bytes(), 5, 0.6, url, name)
    else:
        target, expected = watched / name, outputs["ref-peft"]
        target.mkdir()
        shutil.copy(staging / "peft" / "adapter_config.json", target)
        weights = (staging / "peft" / "adapter_model.safetensors").read_bytes()
        _write_slowly(target / "adapter_model.safetensors", weights, 4, 0.6, url, name)
    wait_for(lambda: name in adapters(url))
    assert answer(url, name) == expected
    lines = [line for line in watch_server.log().splitlines() if str(target) in line]
    assert not [line for line in lines if "WARNING" in line or "ERROR" in line], lines
    assert len([line for line in lines if "waiting" in line]) <= 1, lines
    assert "Traceback" not in watch_server.log()


def test_bad_adapters_are_logged_once_and_skipped_while_serving_goes_on(watch_server, staging, watched):
    url = watch_server.base_url
    (watched / "garbage.gguf").write_bytes(b"this is not a gguf file" * 100)
    write_lora(watched / "qwen.gguf", seed=3, arch="qwen2")
    write_peft_adapter(watched / "dora", BaseModelInfo.from_gguf(model_path()), modules=("q_proj",), layers=[0],
                       use_dora=True)
    (watched / "link.gguf").symlink_to(staging / "a.gguf")  # a link out of the directory: never opened
    reasons = {"garbage.gguf": "not a GGUF file", "qwen.gguf": "architecture", "dora": "DoRA",
               "link.gguf": "outside the adapter directories"}

    def warned() -> dict[str, list[str]]:
        lines = [line for line in watch_server.log().splitlines() if "WARNING" in line]
        return {name: [line for line in lines if str(watched / name) in line] for name in reasons}

    wait_for(lambda: all(warned().values()))
    time.sleep(1.0)  # more events for the same files must not repeat the warning
    for name, lines in warned().items():
        assert len(lines) == 1 and reasons[name] in lines[0], (name, lines)
    assert not {"garbage", "qwen", "dora", "link"} & model_ids(url)
    assert answer(url, "ref-a")
    assert "Traceback" not in watch_server.log()


def test_config_and_api_adapters_are_never_unloaded_by_the_watcher(watch_server, staging, watched, outputs):
    url = watch_server.base_url
    shutil.copy(staging / "b.gguf", watched / "shared.gguf")
    r = httpx.post(url + "/v1/adapters", json={"name": "api-shared", "path": "shared.gguf"})
    assert r.status_code == 201, r.text
    (watched / "shared.gguf").unlink()
    (watched / "cfg.gguf").unlink()
    wait_for(lambda: "shared" not in model_ids(url))
    time.sleep(1.0)
    assert {"api-shared", "from-config"} <= model_ids(url)
    assert answer(url, "api-shared") == outputs["ref-b"]
    assert answer(url, "from-config") == outputs["ref-b"]


def test_readiness_says_incomplete_for_every_cut_and_bad_only_for_wrong_bytes(staging, tmp_path):
    gguf_data = (staging / "a.gguf").read_bytes()
    path = tmp_path / "x.gguf"
    for cut in (0, 3, 4, 100, 5000, len(gguf_data) // 2, len(gguf_data) - 1):
        path.write_bytes(gguf_data[:cut])
        assert gguf_readiness(path).state == "incomplete", cut
    path.write_bytes(gguf_data)
    assert gguf_readiness(path).state == "ready"
    path.write_bytes(b"GGUX" + gguf_data[4:])
    assert gguf_readiness(path).state == "bad"

    peft = tmp_path / "peft"
    peft.mkdir()
    assert peft_readiness(peft).state == "incomplete"
    shutil.copy(staging / "peft" / "adapter_config.json", peft)
    weights = (staging / "peft" / "adapter_model.safetensors").read_bytes()
    for cut in (0, 7, 8, 200, len(weights) // 2, len(weights) - 1):
        (peft / "adapter_model.safetensors").write_bytes(weights[:cut])
        assert peft_readiness(peft).state == "incomplete", cut
    (peft / "adapter_model.safetensors").write_bytes(weights)
    assert peft_readiness(peft).state == "ready"
    (peft / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + weights[8:])
    assert peft_readiness(peft).state == "bad"
