"""--models-dir (#14): which files are models and under what names, and how they join models.toml's."""

from __future__ import annotations

import logging
import math
import os
import tracemalloc
from pathlib import Path

import pytest
from conftest import model_path
from support.gguf_files import Array, Header, V, tiny_model

from nomoat import config
from nomoat.engine.base_info import BaseModelInfo
from nomoat.engine.errors import ModelFileError
from nomoat.engine.model_dims import check_model_file
from nomoat.models_toml import ModelConfig
from nomoat.residency.footprint import estimate
from nomoat.store.models_dir import scan_models_dir, split_part
from nomoat.store.pulled import PulledManifest, PulledModel


@pytest.fixture(autouse=True)
def no_nomoat_env(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("NOMOAT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NOMOAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # no ./models.toml but the test's own
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def make(folder: Path, *names: str) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"GGUF" + name.encode())


def test_split_part():
    part = split_part("Qwen3-Q8_0-00002-of-00003.gguf")
    assert part is not None and (part.stem, part.index, part.count) == ("Qwen3-Q8_0", 2, 3)
    assert split_part("model.gguf") is None
    assert split_part("model-00004-of-00003.gguf") is None  # an index past the count is a name, not a part


def test_scan_names_splits_projectors_and_links(tmp_path: Path):
    models = tmp_path / "models"
    make(models, "alpha.gguf", "Beta.Q4_K_M.gguf", "big-00001-of-00002.gguf", "big-00002-of-00002.gguf",
         "half-00001-of-00003.gguf", "mmproj-alpha-f16.gguf", "notes.txt", "corrupt.gguf")
    (models / "sub").mkdir()
    make(models / "sub", "nested.gguf")  # not scanned: one folder, no tree walk
    (models / "linked.gguf").symlink_to(model_path())
    (models / "to-dir.gguf").symlink_to(models / "sub")
    (models / "dangling.gguf").symlink_to(tmp_path / "nowhere.gguf")
    (models / "corrupt.gguf").write_bytes(b"not a gguf at all")

    found = scan_models_dir(models)
    assert list(found) == ["Beta.Q4_K_M", "alpha", "big", "corrupt", "linked"]
    # llama.cpp opens a split model by its first part.
    assert [f.name for f in found["big"]] == ["big-00001-of-00002.gguf", "big-00002-of-00002.gguf"]
    assert found["linked"] == (models / "linked.gguf",)
    assert scan_models_dir(tmp_path / "missing") == {}


def test_models_join_after_models_toml_and_reload_sees_new_files(tmp_path: Path, caplog):
    models = tmp_path / "models"
    make(models, "smollm2-135m.gguf", "extra.gguf", "has space.gguf")
    toml = tmp_path / "models.toml"
    toml.write_text(f'[server]\nmodels_dir = "{models}"\n[[models]]\nname = "smollm2-135m"\n'
                    'path = "embedded:smollm2-135m"\n')
    with caplog.at_level(logging.INFO, logger="nomoat.config"):
        settings, loaded = config.load({"config": toml})
    assert settings.models_dir == models
    assert [(m.name, Path(m.path).name) for m in loaded.models] == [
        ("smollm2-135m", config.embedded_model_path().name), ("extra", "extra.gguf")]
    assert loaded.default.name == "smollm2-135m"  # models.toml's first model stays the default
    assert "models-dir model smollm2-135m" in caplog.text and "already taken" in caplog.text
    assert "has space.gguf not added" in caplog.text and "whitespace" in caplog.text

    make(models, "later.gguf")  # what SIGHUP's re-read (config.load again) finds
    assert [m.name for m in config.load({"config": toml})[1].models] == ["smollm2-135m", "extra", "later"]


def test_flag_and_environment_and_pulled_models(tmp_path: Path, monkeypatch):
    models = tmp_path / "models"
    make(models, "from-flag.gguf")
    assert [m.name for m in config.load({"models_dir": models})[1].models] == ["smollm2-135m", "from-flag"]
    monkeypatch.setenv("NOMOAT_MODELS_DIR", str(models))
    assert [m.name for m in config.load({})[1].models] == ["smollm2-135m", "from-flag"]
    # A pulled model whose cached files are gone is left out (with a warning), never a failed start.
    PulledManifest(tmp_path / "state").add(PulledModel(name="o/r:Q8_0", repo="o/r", commit="0" * 40,
                                                       files=["r-Q8_0.gguf"], size=1))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    assert [m.name for m in config.load({})[1].models] == ["smollm2-135m", "from-flag"]


# --- headers that lie (#28): every count checked against the file and a sane bound before it is used -------------

def lying(**change: object) -> Header:
    header = tiny_model()
    for key, value in change.items():
        setattr(header, key, value)
    return header


@pytest.mark.parametrize("header, refusal", [
    # Counts of the header itself, against the bytes left in the file (a 1.5 kB file here).
    (lying(claimed_kv=60_000), "claims 60000 metadata keys and 3 tensors, which take at least 13 and 24 bytes each"),
    (lying(claimed_tensors=60_000), "claims 7 metadata keys and 60000 tensors"),
    (lying(claimed_kv=2**40), "claims 1099511627776 metadata keys (at most 65536)"),
    (tiny_model(**{"x": (V.ARRAY, Array(V.UINT32, [], claimed=100_000))}),
     "'llama.x' claims 100000 items of at least 4 bytes each"),
    (tiny_model(**{"x": (V.ARRAY, Array(V.STRING, [], claimed=100_000))}),
     "'llama.x' claims 100000 items of at least 8 bytes each"),
    (Header(kv={"general.architecture": (V.STRING, "llama"),
                "tokenizer.ggml.tokens": (V.ARRAY, Array(V.STRING, [], claimed=2**30))}),
     "'tokenizer.ggml.tokens' is an array of 1073741824 items (at most 16777216 in all arrays)"),
    (Header(kv={"general.architecture": (V.STRING, "llama"),
                "tokenizer.ggml.tokens": (V.ARRAY, Array(V.STRING, [], claimed=1_000_000))}),
     "'tokenizer.ggml.tokens' claims 1000000 items of at least 8 bytes each"),
    (Header(tensors={"token_embd.weight": (2**20, 2**20)}, with_data=False),
     "the data of tensor 'token_embd.weight' ends at byte 4398046511200, the file has 96"),
    # The dimensions a memory estimate and an adapter check read.
    (tiny_model(block_count=(V.UINT32, 2**28)), "llama.block_count is 268435456, outside 0..3 (each layer has "
                                                "tensors, and the model holds 3)"),
    (tiny_model(block_count=(V.STRING, "abc")), "llama.block_count is 'abc', not an integer"),
    (tiny_model(attention__head_count=(V.FLOAT32, math.nan)), "llama.attention.head_count is nan, not an integer"),
    (tiny_model(attention__head_count=(V.UINT32, 70_000)), "llama.attention.head_count is 70000, outside 0..65536"),
    (tiny_model(attention__head_count_kv=(V.ARRAY, Array(V.INT32, [1, -1]))),
     "llama.attention.head_count_kv[1] is -1, outside 0..65536"),
    (tiny_model(feed_forward_length=(V.ARRAY, Array(V.UINT32, [16] * 3))),
     "llama.feed_forward_length holds 3 values, one per layer, but llama.block_count is 2"),
    (tiny_model(embedding_length=(V.UINT64, 2**40)), "llama.embedding_length is 1099511627776, outside 0..1048576"),
    (tiny_model(context_length=(V.UINT64, 2**40)), "llama.context_length is 1099511627776, outside 0..4294967295"),
    (tiny_model(attention__key_length=(V.BOOL, True)), "llama.attention.key_length is True, not an integer"),
    (tiny_model(attention__value_length=(V.FLOAT64, math.inf)), "llama.attention.value_length is inf, not an integer"),
    (Header(kv={"general.architecture": (V.UINT32, 7)}), "not a GGUF model (no general.architecture)"),
])
def test_a_lying_header_is_refused_naming_the_field_and_its_bound(tmp_path: Path, header: Header, refusal: str):
    path = header.write(tmp_path / "lying.gguf")
    tracemalloc.start()
    try:
        for read in (check_model_file, lambda p: estimate(ModelConfig(name="x", path=str(p)))):
            with pytest.raises(ModelFileError) as refused:
                read(path)
            assert refused.value.message.startswith(f"{path}: ") and refusal in refused.value.message
        # Refused before anything is built per claimed item: a 2**28-layer claim took 4 GB and 164 s.
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()


def test_an_adapters_base_is_read_through_the_same_checks(tmp_path: Path):
    bad = tiny_model(attention__head_count=(V.STRING, "nine")).write(tmp_path / "bad.gguf")
    with pytest.raises(ModelFileError, match=r"llama\.attention\.head_count is 'nine', not an integer"):
        BaseModelInfo.from_gguf(bad)
    base = BaseModelInfo.from_gguf(tiny_model().write(tmp_path / "good.gguf"))
    assert (base.n_layer, base.n_embd, base.n_head, base.n_head_kv, base.head_dim_k) == (2, 8, 2, 1, 4)
    hybrid = tiny_model(attention__head_count=(V.ARRAY, Array(V.UINT32, [0, 2]))).write(tmp_path / "hybrid.gguf")
    assert BaseModelInfo.from_gguf(hybrid).n_head == 2 and BaseModelInfo.from_gguf(hybrid).uniform_layers


def test_the_real_models_pass(tmp_path: Path):
    dims = check_model_file(config.embedded_model_path())
    assert (dims.n_layer, dims.n_embd, dims.n_head[0], dims.n_head_kv[0]) == (30, 576, 9, 3)
    assert check_model_file(model_path()).n_layer == 30
