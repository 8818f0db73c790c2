"""--models-dir (#14): which files are models and under what names, and how they join models.toml's."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from conftest import model_path

from nomoat import config
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
