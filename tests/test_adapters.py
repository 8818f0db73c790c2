"""Per-request LoRA through the real server: oracle equality, no cross-talk, stacks, runtime load, refusals."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
from conftest import ServerProcess, models_toml
from lora_factory import DIMS, write_lora
from oracle import greedy_chat

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
COLORS = [{"role": "user", "content": "Name three colors."}]
# std 0.12 makes each adapter change the very first tokens, so outputs are told apart at once.
STD = 0.12


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("adapters")
    write_lora(d / "a.gguf", seed=1, std=STD)
    write_lora(d / "b.gguf", seed=2, std=STD)
    return d


@pytest.fixture(scope="session")
def lora_server(tmp_path_factory: pytest.TempPathFactory, adapter_dir: Path):
    # The prefix cache is off here: a reused prefix is computed in another batch shape than a
    # fresh prompt, and exact equality with the oracle holds only for equal batch shapes.
    extra = (
        "prefix_cache = false\n"
        f'[[adapters]]\nname = "a"\npath = "{adapter_dir / "a.gguf"}"\n'
        f'[[adapters]]\nname = "b"\npath = "{adapter_dir / "b.gguf"}"\n'
        '[[stacks]]\nname = "ab"\nadapters = { a = 0.5, b = 0.5 }\n'
    )
    # --lora adds "cli" (a.gguf again) from the command line: test_cli_lora_flag_attaches_to_default_model.
    proc = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("lora"),
                         "--adapter-dir", str(adapter_dir), "--lora", f"cli={adapter_dir / 'a.gguf'}").wait_ready()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def oracles(adapter_dir: Path) -> dict[str, dict[str, str]]:
    """Greedy answers of a fresh Llama(lora_path=...) for each adapter, per prompt."""
    out: dict[str, dict[str, str]] = {}
    for name, path in [("base", None), ("a", str(adapter_dir / "a.gguf")), ("b", str(adapter_dir / "b.gguf"))]:
        out[name] = {
            "poem": greedy_chat(POEM, lora_path=path, max_tokens=32),
            "colors": greedy_chat(COLORS, lora_path=path, max_tokens=16),
        }
    return out


def chat(url: str, model: str, messages=POEM, max_tokens: int = 32, **extra) -> httpx.Response:
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, **extra}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    return r


def text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def common_prefix(x: str, y: str) -> int:
    return len(os.path.commonprefix([x, y]))


def test_oracles_differ(oracles):
    """The adapters really change the output; otherwise every equality below proves nothing."""
    assert len({o["poem"] for o in oracles.values()}) == 3
    assert len({o["colors"] for o in oracles.values()}) == 3


@pytest.mark.parametrize("model,oracle", [("smollm2-135m", "base"), ("a", "a"), ("b", "b")])
def test_adapter_by_model_name_equals_llama_with_lora_path(lora_server, oracles, model, oracle):
    r = chat(lora_server.base_url, model)
    assert text(r) == oracles[oracle]["poem"]
    expected = "" if oracle == "base" else f"{oracle}@1"
    assert r.headers["x-nomoat-adapters"] == expected


def test_switching_sequence_has_no_cross_talk(lora_server, oracles):
    """base → A → base → B → A → B → base, each equal to its own oracle (KV never leaks across sets)."""
    for model, oracle in [("smollm2-135m", "base"), ("a", "a"), ("smollm2-135m", "base"), ("b", "b"),
                          ("a", "a"), ("b", "b"), ("smollm2-135m", "base")]:
        assert text(chat(lora_server.base_url, model)) == oracles[oracle]["poem"], model


def test_concurrent_mixed_adapters_follow_their_own_oracle(lora_server, oracles):
    models = ["a", "b", "smollm2-135m", "a", "b", "smollm2-135m", "a", "b"]
    names = {"a": "a", "b": "b", "smollm2-135m": "base"}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda m: text(chat(lora_server.base_url, m, COLORS, 16)), models))
    for model, out in zip(models, outs, strict=False):
        own = common_prefix(out, oracles[names[model]]["colors"])
        others = [common_prefix(out, o["colors"]) for k, o in oracles.items() if k != names[model]]
        assert own > max(others), (model, out, oracles)


def test_stack_by_name_equals_body_field_and_is_reproducible(lora_server, oracles):
    named = text(chat(lora_server.base_url, "ab"))
    body = chat(lora_server.base_url, "smollm2-135m", lora=[{"name": "a", "scale": 0.5}, {"name": "b", "scale": 0.5}])
    assert text(body) == named
    assert body.headers["x-nomoat-adapters"] == "a@0.5,b@0.5"
    assert text(chat(lora_server.base_url, "ab")) == named
    assert named not in (oracles["a"]["poem"], oracles["b"]["poem"], oracles["base"]["poem"])


def test_scale_zero_and_empty_list_mean_base(lora_server, oracles):
    assert text(chat(lora_server.base_url, "smollm2-135m", lora=[{"name": "a", "scale": 0}])) == oracles["base"]["poem"]
    r = chat(lora_server.base_url, "a", lora=[])
    assert text(r) == oracles["base"]["poem"]
    assert r.headers["x-nomoat-adapters"] == ""


def test_body_field_through_openai_sdk_extra_body(lora_server, oracles):
    from openai import OpenAI

    client = OpenAI(base_url=lora_server.base_url + "/v1", api_key="x")
    out = client.chat.completions.create(
        model="smollm2-135m", messages=POEM, temperature=0, max_tokens=32,
        extra_body={"lora": [{"name": "b", "scale": 1.0}]},
    )
    assert out.choices[0].message.content == oracles["b"]["poem"]


def test_streaming_with_adapter_equals_non_streaming(lora_server, oracles):
    body = {"model": "a", "messages": POEM, "temperature": 0, "max_tokens": 32, "stream": True}
    pieces = []
    with httpx.stream("POST", lora_server.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["x-nomoat-adapters"] == "a@1"
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    pieces.append(choice["delta"].get("content") or "")
    assert "".join(pieces) == oracles["a"]["poem"]


def test_unknown_adapter_is_404_never_a_fallback(lora_server):
    r = chat(lora_server.base_url, "nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = chat(lora_server.base_url, "smollm2-135m", lora=[{"name": "nope"}])
    assert r.status_code == 404 and r.json()["error"]["param"] == "lora"
    # As the model 404 lists the models, the adapter 404 lists the adapters there are (on that base).
    assert r.json()["error"]["message"].endswith("does not exist. Available on smollm2-135m: a, b, cli")
    assert text(chat(lora_server.base_url, "a", max_tokens=4))


def test_models_list_shows_adapters_with_parent_and_root(lora_server):
    cards = {m["id"]: m for m in httpx.get(lora_server.base_url + "/v1/models").json()["data"]}
    assert cards["smollm2-135m"]["parent"] is None
    for name in ("a", "b", "ab"):
        assert cards[name]["object"] == "model"
        assert cards[name]["parent"] == "smollm2-135m" and cards[name]["root"] == "smollm2-135m"
    assert cards["ab"]["adapters"] == [{"name": "a", "scale": 0.5}, {"name": "b", "scale": 0.5}]


def test_runtime_load_use_unload_and_reload_under_same_name(lora_server, adapter_dir, oracles):
    url = lora_server.base_url
    shutil.copy(adapter_dir / "a.gguf", adapter_dir / "rt.gguf")
    r = httpx.post(url + "/v1/adapters", json={"name": "rt", "path": "rt.gguf"})
    assert r.status_code == 201, r.text
    assert r.json()["base"] == "smollm2-135m"
    assert "rt" in {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
    assert text(chat(url, "rt")) == oracles["a"]["poem"]
    assert httpx.delete(url + "/v1/adapters/rt").json()["deleted"] is True
    assert chat(url, "rt").status_code == 404
    assert "rt" not in {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
    # Another file under the old name: nothing computed under the old file may be reused.
    shutil.copy(adapter_dir / "b.gguf", adapter_dir / "rt.gguf")
    assert httpx.post(url + "/v1/adapters", json={"name": "rt", "path": str(adapter_dir / "rt.gguf")}).status_code == 201
    assert text(chat(url, "rt")) == oracles["b"]["poem"]
    assert httpx.delete(url + "/v1/adapters/rt").status_code == 200
    assert httpx.delete(url + "/v1/adapters/rt").status_code == 404


def test_runtime_replace_swaps_the_content_under_the_same_name(lora_server, adapter_dir, oracles):
    url = lora_server.base_url
    shutil.copy(adapter_dir / "a.gguf", adapter_dir / "rp-a.gguf")
    shutil.copy(adapter_dir / "b.gguf", adapter_dir / "rp-b.gguf")
    assert httpx.post(url + "/v1/adapters", json={"name": "rp", "path": "rp-a.gguf"}).status_code == 201
    r = httpx.post(url + "/v1/adapters", json={"name": "rp", "path": "rp-b.gguf"})
    assert r.status_code == 409 and "replace: true" in r.json()["error"]["message"]
    assert text(chat(url, "rp")) == oracles["a"]["poem"]
    r = httpx.post(url + "/v1/adapters", json={"name": "rp", "path": "rp-b.gguf", "replace": True})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == str(adapter_dir / "rp-b.gguf")
    assert text(chat(url, "rp")) == oracles["b"]["poem"]
    r = httpx.post(url + "/v1/adapters", json={"name": "smollm2-135m", "path": "rp-a.gguf", "replace": True})
    assert r.status_code == 409, "a model id is never replaced by an adapter"
    assert httpx.delete(url + "/v1/adapters/rp").status_code == 200


def test_unload_while_streaming_lets_the_stream_finish(lora_server, adapter_dir):
    url = lora_server.base_url
    shutil.copy(adapter_dir / "b.gguf", adapter_dir / "busy.gguf")
    assert httpx.post(url + "/v1/adapters", json={"name": "busy", "path": "busy.gguf"}).status_code == 201
    body = {"model": "busy", "messages": POEM, "max_tokens": 48, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    lines = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        it = r.iter_lines()
        for line in it:
            lines.append(line)
            if len([x for x in lines if x.startswith("data: ")]) == 3:
                assert httpx.delete(url + "/v1/adapters/busy").status_code == 200
                break
        lines.extend(it)
    data = [x for x in lines if x.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert json.loads(data[-2][6:])["usage"]["completion_tokens"] == 48
    assert chat(url, "busy").status_code == 404


@pytest.mark.parametrize("path,status", [
    ("../../etc/passwd", 403),
    ("/etc/passwd", 403),
    ("/proc/self/environ", 403),
    ("escape.gguf", 403),  # a symlink inside the directory pointing outside
    ("nothere.gguf", 400),
    ("bad\u0000name.gguf", 400),
])
def test_paths_are_confined_to_adapter_dirs(lora_server, adapter_dir, path, status):
    link = adapter_dir / "escape.gguf"
    if not link.is_symlink():
        link.symlink_to("/etc/passwd")
    r = httpx.post(lora_server.base_url + "/v1/adapters", json={"name": "x", "path": path})
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["param"] == "path"
    assert text(chat(lora_server.base_url, "a", max_tokens=4))


def test_runtime_loading_without_adapter_dir_is_refused(client):
    r = client.post("/v1/adapters", json={"name": "x", "path": "/tmp/x.gguf"})
    assert r.status_code == 403
    assert "adapter director" in r.json()["error"]["message"]


def _write_gguf(path: Path, kv: dict[str, str], arch: str = "llama") -> Path:
    writer = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in kv.items():
        writer.add_string(key, value)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 576), np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((576, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _bad_adapters(d: Path) -> dict[str, tuple[Path, str]]:
    dims = {**DIMS, "attn_q": (512, 576)}
    truncated = d / "truncated.gguf"
    truncated.write_bytes((d / "a.gguf").read_bytes()[:100_000])
    garbage = d / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    return {
        "other architecture": (write_lora(d / "qwen.gguf", 3, arch="qwen2"), "architecture"),
        "other dimensions": (write_lora(d / "dims.gguf", 4, dims=dims, modules=("attn_q",)), "shapes"),
        "too many blocks": (write_lora(d / "deep.gguf", 5, n_layer=31, modules=("attn_v",)), "block 30"),
        "not a LoRA": (_write_gguf(d / "model.gguf", {"general.type": "model"}), "not a LoRA"),
        "truncated": (truncated, "GGUF"),
        "garbage": (garbage, "GGUF"),
    }


def test_mismatched_and_corrupt_adapters_are_refused_and_server_keeps_serving(lora_server, adapter_dir):
    for label, (path, reason) in _bad_adapters(adapter_dir).items():
        r = httpx.post(lora_server.base_url + "/v1/adapters", json={"name": f"bad-{path.stem}", "path": path.name})
        assert r.status_code == 400, (label, r.text)
        message = r.json()["error"]["message"]
        assert str(path) in message and reason in message, (label, message)
        assert text(chat(lora_server.base_url, "a", max_tokens=4))
    names = {m["id"] for m in httpx.get(lora_server.base_url + "/v1/models").json()["data"]}
    assert not any(n.startswith("bad-") for n in names)


def test_mismatched_adapter_in_config_stops_startup_with_clear_error(start_server, tmp_path):
    bad = write_lora(tmp_path / "qwen.gguf", 3, arch="qwen2")
    proc = start_server(models_toml(extra=f'[[adapters]]\nname = "q"\npath = "{bad}"\n'), wait=False)
    assert proc.proc.wait(60) == 2
    log = proc.log()
    assert str(bad) in log and "architecture" in log and "Traceback" not in log


def test_cli_lora_flag_attaches_to_default_model(lora_server, oracles):
    proc = lora_server
    cards = {m["id"]: m for m in httpx.get(proc.base_url + "/v1/models").json()["data"]}
    assert cards["cli"]["parent"] == "smollm2-135m"
    assert text(chat(proc.base_url, "cli")) == oracles["a"]["poem"]


def test_peft_dir_holding_a_link_out_is_refused_before_reading(lora_server, adapter_dir, tmp_path):
    sneaky = adapter_dir / "sneaky-peft"
    sneaky.mkdir(exist_ok=True)
    (sneaky / "adapter_config.json").write_text("{}")
    outside = tmp_path / "weights.safetensors"
    outside.write_bytes(b"not read")
    link = sneaky / "adapter_model.safetensors"
    if not link.is_symlink():
        link.symlink_to(outside)
    r = httpx.post(lora_server.base_url + "/v1/adapters", json={"name": "sneaky", "path": "sneaky-peft"})
    assert r.status_code == 403, r.text
    assert "outside the adapter directories" in r.json()["error"]["message"]
