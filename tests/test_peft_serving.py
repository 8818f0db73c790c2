"""PEFT LoRA directories served as they are: equal to a test-built GGUF and Llama(lora_path=...); refusals; cache."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
from conftest import ServerProcess, model_path, models_toml
from oracle import greedy_chat
from peft_factory import ALL_MODULES, WrittenAdapter, layer_module_name, write_peft_adapter
from support.process import run_nomoat

from nomoat.engine.base_info import BaseModelInfo

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
# llama.cpp's names for PEFT's seven modules, spelled out here rather than taken from the gguf package.
GGUF_NAMES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
RSLORA = {"r": 16, "lora_alpha": 8.0, "use_rslora": True, "seed": 2}
PATTERNS = {"r": 8, "lora_alpha": 16.0, "seed": 3,
            "rank_pattern": {"q_proj": 4, "layers.3.mlp.down_proj": 12},
            "alpha_pattern": {"v_proj": 32.0, "o_proj": 4.0}}


def _pattern(pattern: dict, name: str, default: float) -> float:
    """PEFT's lookup: the first key that matches the module name or a dotted suffix of it."""
    return next((v for k, v in pattern.items() if re.fullmatch(rf"(?:.*\.)?(?:{k})", name)), default)


def interleave_heads(w: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, rows [x0..x(d/2-1), y0..y(d/2-1)] become [x0, y0, x1, y1, ...] (llama.cpp's rope layout)."""
    heads = []
    for head in np.split(w, n_head):
        first, second = np.split(head, 2)
        heads.append(np.stack([first, second], axis=1).reshape(head.shape))
    return np.concatenate(heads)


def write_reference_gguf(adapter: WrittenAdapter, base: BaseModelInfo, out: Path, *, permute: bool = True,
                         honour_rslora: bool = True) -> Path:
    """The GGUF adapter that serves what PEFT computes, built from the adapter's own matrices.

    llama.cpp scales each lora_b @ lora_a by alpha / rank(tensor) from one file-wide alpha, so the
    config's alpha is written (times sqrt(r) for rsLoRA) and any module whose PEFT scale differs
    (rank_pattern, alpha_pattern) carries the ratio in its lora_b.
    """
    config = adapter.config
    rslora = config["use_rslora"] and honour_rslora
    file_alpha = config["lora_alpha"] * (math.sqrt(config["r"]) if rslora else 1.0)
    writer = gguf.GGUFWriter(str(out), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, file_alpha)
    heads = {"q_proj": base.n_head, "k_proj": base.n_head_kv}
    for layer in range(base.n_layer):
        for module in ALL_MODULES:
            a, b = adapter.lora(layer, module)
            rank, name = a.shape[0], layer_module_name(layer, module)
            alpha = _pattern(config["alpha_pattern"], name, config["lora_alpha"])
            peft_scale = alpha / (math.sqrt(rank) if rslora else rank)
            ratio = peft_scale / (file_alpha / rank)
            if permute and module in heads:
                b = interleave_heads(b, heads[module])
            if not math.isclose(ratio, 1.0, rel_tol=1e-12):
                b = b * np.float32(ratio)
            stem = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
            writer.add_tensor(f"{stem}.lora_a", np.ascontiguousarray(a))
            writer.add_tensor(f"{stem}.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def base() -> BaseModelInfo:
    return BaseModelInfo.from_gguf(model_path())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adapter directory of the module's server: PEFT directories live here."""
    return tmp_path_factory.mktemp("peft")


@pytest.fixture(scope="module")
def adapters(root: Path, base: BaseModelInfo) -> dict[str, WrittenAdapter]:
    return {
        "main": write_peft_adapter(root / "main", base, r=8, lora_alpha=16.0, seed=1),
        "rslora": write_peft_adapter(root / "rslora", base, **RSLORA),
        "patterns": write_peft_adapter(root / "patterns", base, **PATTERNS),
    }


@pytest.fixture(scope="module")
def references(adapters: dict[str, WrittenAdapter], base: BaseModelInfo,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Test-built GGUF files: the right conversion of each adapter, and two wrong ones of `main`/`rslora`."""
    out = tmp_path_factory.mktemp("reference")
    refs = {name: write_reference_gguf(a, base, out / f"{name}.gguf") for name, a in adapters.items()}
    refs["main-unpermuted"] = write_reference_gguf(adapters["main"], base, out / "unpermuted.gguf", permute=False)
    refs["rslora-ignored"] = write_reference_gguf(adapters["rslora"], base, out / "rslora-ignored.gguf",
                                                  honour_rslora=False)
    return refs


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def peft_server(tmp_path_factory, root, adapters, references, state_dir):
    """PEFT directories from models.toml next to the reference GGUF of `main`; runtime loads from `root`."""
    extra = "".join(
        f'[[adapters]]\nname = "{name}"\npath = "{path}"\n'
        for name, path in [("peft-main", root / "main"), ("gguf-main", references["main"]),
                           ("peft-rslora", root / "rslora"), ("peft-patterns", root / "patterns")]
    )
    # Exact equality with Llama(lora_path=...) needs each prompt evaluated whole, as the oracle does; a
    # reused prefix is computed in another batch shape, which llama.cpp does not promise is bit-identical.
    extra = "prefix_cache = false\n" + extra
    proc = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("peft-server"),
                         "--adapter-dir", str(root), "--state-dir", str(state_dir)).wait_ready()
    yield proc
    proc.close()


def chat(url: str, model: str, max_tokens: int = 32) -> str:
    body = {"model": model, "messages": POEM, "temperature": 0, "max_tokens": max_tokens}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def post_adapter(url: str, name: str, path: Path | str) -> httpx.Response:
    return httpx.post(url + "/v1/adapters", json={"name": name, "path": str(path)}, timeout=120)


def model_ids(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}


@pytest.fixture(scope="module")
def main_output(peft_server, references) -> str:
    """What the right conversion of `main` answers: Llama(lora_path=<test-built GGUF>), checked once here."""
    expected = greedy_chat(POEM, lora_path=str(references["main"]))
    assert expected != chat(peft_server.base_url, "smollm2-135m"), "the adapter must change the output"
    return expected


def test_peft_dir_in_models_toml_equals_test_built_gguf_and_llama_cpp(peft_server, main_output):
    url = peft_server.base_url
    assert chat(url, "peft-main") == main_output
    assert chat(url, "gguf-main") == main_output


def test_peft_dir_posted_at_runtime_equals_the_same(peft_server, root, main_output):
    url = peft_server.base_url
    r = post_adapter(url, "peft-api", "main")
    assert r.status_code == 201, r.text
    assert r.json()["source"] == str((root / "main").resolve())
    assert chat(url, "peft-api") == main_output
    assert httpx.delete(url + "/v1/adapters/peft-api").status_code == 200


def test_conversion_without_q_k_permutation_gives_other_output(references, main_output):
    """The equalities above can fail: skipping llama.cpp's rope row permutation loads, and answers differently."""
    assert greedy_chat(POEM, lora_path=str(references["main-unpermuted"])) != main_output


def test_rslora_is_scaled_by_alpha_over_sqrt_r(peft_server, references, main_output):
    served = chat(peft_server.base_url, "peft-rslora")
    assert served == greedy_chat(POEM, lora_path=str(references["rslora"]))
    assert served != greedy_chat(POEM, lora_path=str(references["rslora-ignored"]))
    assert served != main_output


def test_rank_and_alpha_patterns_are_honoured(peft_server, adapters, references, main_output):
    assert adapters["patterns"].lora(0, "q_proj")[0].shape[0] == 4
    assert adapters["patterns"].lora(3, "down_proj")[0].shape[0] == 12
    served = chat(peft_server.base_url, "peft-patterns")
    assert served == greedy_chat(POEM, lora_path=str(references["patterns"]))
    assert served != main_output


def _refusals(root: Path, base: BaseModelInfo) -> dict[str, tuple[Path, str]]:
    """Directory -> (the file the message must name, a word of the reason)."""
    def make(name: str, **kwargs) -> WrittenAdapter:
        return write_peft_adapter(root / name, base, modules=("q_proj", "v_proj"), layers=range(2), **kwargs)

    cases: dict[str, tuple[Path, str]] = {}
    w = make("ia3", config_overrides={"peft_type": "IA3"})
    cases["ia3"] = (w.config_path, "peft_type")
    w = make("dora", use_dora=True)
    cases["dora"] = (w.config_path, "DoRA")
    w = make("saved", modules_to_save=["lm_head"])
    cases["saved"] = (w.config_path, "modules_to_save")
    w = make("bias", bias="all")
    cases["bias"] = (w.config_path, "bias")
    w = make("unknown", extra_target_modules=("foo_proj",))
    cases["unknown"] = (w.weights_path, "foo_proj")
    w = write_peft_adapter(root / "shapes", dataclasses.replace(base, n_ff=1024), modules=("up_proj",), layers=[0])
    cases["shapes"] = (w.weights_path, "shape mismatch")
    w = make("missing")
    w.weights_path.unlink()
    cases["missing"] = (w.weights_path, "missing")
    w = make("pickle")
    w.weights_path.unlink()
    (w.path / "adapter_model.bin").write_bytes(b"\x80\x04\x95 not loaded")
    cases["pickle"] = (w.path / "adapter_model.bin", "pickle")
    return cases


def test_each_refusal_is_a_400_naming_file_and_reason_and_the_server_keeps_serving(peft_server, root, base):
    url = peft_server.base_url
    for name, (named_file, reason) in _refusals(root, base).items():
        r = post_adapter(url, f"bad-{name}", name)
        assert r.status_code == 400, (name, r.text)
        message = r.json()["error"]["message"]
        assert str(named_file) in message and reason in message, (name, message)
        assert chat(url, "peft-main", max_tokens=2)
    assert not any(i.startswith("bad-") for i in model_ids(url))


def test_refused_peft_dir_in_models_toml_stops_startup(start_server, tmp_path, base):
    bad = write_peft_adapter(tmp_path / "dora", base, modules=("q_proj",), layers=[0], use_dora=True)
    proc = start_server(models_toml(extra=f'[[adapters]]\nname = "d"\npath = "{bad.path}"\n'),
                        "--state-dir", str(tmp_path / "state"), wait=False)
    assert proc.proc.wait(60) == 2
    log = proc.log()
    assert str(bad.config_path) in log and "DoRA" in log and "Traceback" not in log


def test_conversion_is_cached_and_redone_when_the_adapter_changes(peft_server, root, base, state_dir):
    url, cache = peft_server.base_url, state_dir / "adapters"
    adapter = write_peft_adapter(root / "cached", base, r=4, lora_alpha=8.0, seed=7)
    before = set(cache.glob("*.gguf"))
    assert post_adapter(url, "cache-1", "cached").status_code == 201
    (converted,) = set(cache.glob("*.gguf")) - before
    mtime = converted.stat().st_mtime_ns
    first = chat(url, "cache-1", max_tokens=16)
    assert httpx.delete(url + "/v1/adapters/cache-1").status_code == 200

    assert post_adapter(url, "cache-2", "cached").status_code == 201
    assert set(cache.glob("*.gguf")) - before == {converted}, "loaded again without converting"
    assert converted.stat().st_mtime_ns == mtime
    assert chat(url, "cache-2", max_tokens=16) == first

    adapter.config["lora_alpha"] = 32.0
    adapter.config_path.write_text(json.dumps(adapter.config))
    assert post_adapter(url, "cache-3", "cached").status_code == 201
    assert len(set(cache.glob("*.gguf")) - before) == 2, "a changed adapter is converted again"
    assert chat(url, "cache-3", max_tokens=16) != first


def convert_cli(*args: str) -> subprocess.CompletedProcess:
    return run_nomoat("convert-lora", *args, timeout=120)


def test_convert_lora_cli_output_loads_in_llama_cpp_with_the_same_output(root, tmp_path, main_output):
    out = tmp_path / "out" / "main.gguf"
    done = convert_cli(str(root / "main"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    assert greedy_chat(POEM, lora_path=str(out)) == main_output
    config = tmp_path / "models.toml"
    config.write_text(models_toml())
    by_id = tmp_path / "by-id.gguf"
    done = convert_cli(str(root / "main"), "--base", "default", "--config", str(config), "-o", str(by_id))
    assert done.returncode == 0, done.stderr
    assert by_id.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("args,message", [
    (["{root}/nope"], "not a PEFT adapter directory"),
    (["{root}/main", "--base", "no-such-model"], "no-such-model"),
    (["{root}/dora"], "DoRA"),
])
def test_convert_lora_cli_errors_are_one_message_and_exit_2(root, base, tmp_path, args, message):
    if not (root / "dora").exists():
        write_peft_adapter(root / "dora", base, modules=("q_proj",), layers=[0], use_dora=True)
    done = convert_cli(*[a.format(root=root) for a in args], "-o", str(tmp_path / "x.gguf"),
                       "--config", str(tmp_path / "none.toml"))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.gguf").exists()
