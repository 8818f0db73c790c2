"""Pull by name (#14): names, which file a name picks, downloads from a fake Hub on 127.0.0.1, and serving them.

Nothing here reaches the internet: HF_ENDPOINT points at tests/support/fake_hub.py, HF_HOME at a temp folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.fake_hub import FakeHub
from support.gguf_files import V, tiny_model
from support.process import ServerProcess, free_port, run_nomoat
from wire import NO_EOS

from nomoat import config
from nomoat.store.hub import GgufChoice, Hub, HubError, ModelRef, group_ggufs, parse_ref, pick, quant_of

# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, repo, quant", [
    ("bartowski/SmolLM2-135M-Instruct-GGUF", "bartowski/SmolLM2-135M-Instruct-GGUF", None),
    ("hf:bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M", "bartowski/SmolLM2-135M-Instruct-GGUF", "Q4_K_M"),
    ("unsloth/Qwen3-0.6B-GGUF:ud-q4_k_xl", "unsloth/Qwen3-0.6B-GGUF", "ud-q4_k_xl"),
    ("a/b", "a/b", None),
])
def test_parse_ref(text, repo, quant):
    ref = parse_ref(text)
    assert (ref.repo, ref.quant) == (repo, quant)
    assert ref.name == text.removeprefix("hf:")


@pytest.mark.parametrize("text", [
    "", "hf:", "model.gguf", "just-a-name", "a/b/c", "/a/b", "a/b:", "a/b:Q4 K", "a//b", "-a/b", "a/b-", "a/../b",
    "a/b:c:d", "https://huggingface.co/a/b", "a b/c",
])
def test_parse_ref_rejects(text):
    with pytest.raises(HubError, match="not a Hugging Face model name: expected OWNER/REPO or OWNER/REPO:QUANT"):
        parse_ref(text)


@pytest.mark.parametrize("filename, quant", [
    ("model-Q4_K_M.gguf", "Q4_K_M"),
    ("model.q4_k_m.gguf", "q4_k_m"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
    ("Qwen2.5-7B-Instruct-IQ2_XXS.gguf", "IQ2_XXS"),
    ("Qwen2.5-7B-Instruct-bf16.gguf", "bf16"),
    ("Q8_0/Qwen3-Q8_0-00002-of-00003.gguf", "Q8_0"),
    ("UD-Q4_K_XL/M-UD-Q4_K_XL-00001-of-00003.gguf", "UD-Q4_K_XL"),
    ("Qwen3-30B-A3B-Q5_K_S.gguf", "Q5_K_S"),
    ("plain.gguf", None),
])
def test_quant_of(filename, quant):
    assert quant_of(filename) == quant


REPO_FILES = [
    ("README.md", 10), ("model-Q8_0.gguf", 3000), ("model-Q2_K.gguf", 1000), ("mmproj-model-f16.gguf", 5),
    ("model-Q3_K_S-00001-of-00002.gguf", 600), ("model-Q3_K_S-00002-of-00002.gguf", 600),
    ("model-IQ1_S-00001-of-00003.gguf", 1),  # a split set missing two parts is no model
]


def choose(files, quant=None):
    return pick(group_ggufs(files), ModelRef("o/r", quant), "o/r").files


def test_pick_default_is_q4_k_m_else_the_smallest():
    assert choose(REPO_FILES) == ("model-Q2_K.gguf",)  # mmproj is smaller, never a model; nor a partial split
    assert choose([*REPO_FILES, ("model.q4_k_m.gguf", 9000)]) == ("model.q4_k_m.gguf",)  # Q4_K_M, however big


def test_pick_by_quant_any_case_and_split_parts_together():
    assert choose(REPO_FILES, "q8_0") == ("model-Q8_0.gguf",)
    assert choose(REPO_FILES, "Q3_K_S") == ("model-Q3_K_S-00001-of-00002.gguf", "model-Q3_K_S-00002-of-00002.gguf")
    assert group_ggufs(REPO_FILES)[1] == GgufChoice(
        ("model-Q3_K_S-00001-of-00002.gguf", "model-Q3_K_S-00002-of-00002.gguf"), 1200)
    assert choose([("UD-Q4_K_XL/m-UD-Q4_K_XL.gguf", 1)], "Q4_K_XL") == ("UD-Q4_K_XL/m-UD-Q4_K_XL.gguf",)


def test_pick_errors_name_what_is_missing():
    with pytest.raises(HubError, match=r"o/r has no Q5_K_M file; its quantisations: Q2_K, Q3_K_S, Q8_0$"):
        choose(REPO_FILES, "Q5_K_M")
    with pytest.raises(HubError, match="o/r has no GGUF model files"):
        choose([("README.md", 10), ("mmproj-f16.gguf", 5)])


# --- downloads from the fake Hub -----------------------------------------------------------------

TINY = "nomoat-test/tiny"
SMOL = "nomoat-test/smol"


def gguf_of_size(path: Path, size: int) -> Path:
    """A valid (tiny) GGUF model, padded to `size` bytes: only files with a GGUF header are kept as models."""
    header = tiny_model().bytes()
    path.write_bytes(header + os.urandom(size - len(header)))
    return path


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a hostile listing's absolute file name points: nothing may ever appear there."""
    return tmp_path_factory.mktemp("outside")


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Iterator[FakeHub]:
    src = tmp_path_factory.mktemp("hub-files")
    blobs = {}
    for name, size in [("q8", 3000), ("q2", 2000), ("p1", 1600), ("p2", 1700), ("mm", 1650)]:
        blobs[name] = gguf_of_size(src / name, size)
    for name, size in [("readme", 10)]:
        blobs[name] = src / name
        blobs[name].write_bytes(os.urandom(size))
    # Big enough that a cut half way leaves a whole 10 MB download chunk on disk to resume after.
    blobs["big"] = gguf_of_size(src / "big", 25_000_000)
    hub = FakeHub()
    hub.add_repo(TINY, {"README.md": blobs["readme"], "tiny-Q8_0.gguf": blobs["q8"], "tiny-Q2_K.gguf": blobs["q2"],
                        "mmproj-tiny-f16.gguf": blobs["mm"], "Q3_K_S/tiny-Q3_K_S-00001-of-00002.gguf": blobs["p1"],
                        "Q3_K_S/tiny-Q3_K_S-00002-of-00002.gguf": blobs["p2"], "tiny-Q4_0.gguf": blobs["big"]})
    hub.add_repo("nomoat-test/no-gguf", {"README.md": blobs["readme"]})
    # The embedded model under two quant names: a pull by name and a models.toml hf: path, both served.
    shipped = config.embedded_model_path()
    hub.add_repo(SMOL, {"smol-Q4_K_M.gguf": shipped, "smol-Q8_0.gguf": shipped})
    add_hostile_repos(hub, src, blobs["q8"], outside)
    yield hub
    hub.close()


@pytest.fixture()
def hub(fake_hub: FakeHub, tmp_path: Path) -> Hub:
    return Hub(endpoint=fake_hub.url, cache_dir=tmp_path / "hf-cache", offline=False)


def test_fetch_by_name_and_by_quant(hub: Hub, fake_hub: FakeHub):
    default = hub.fetch(parse_ref(TINY))
    assert default.files == ("tiny-Q2_K.gguf", "mmproj-tiny-f16.gguf")  # its vision projector beside it
    assert default.paths[0].read_bytes() == fake_hub.repos[TINY]["tiny-Q2_K.gguf"].source.read_bytes()
    assert default.commit == fake_hub.commits[TINY]
    split = hub.fetch(parse_ref(f"{TINY}:q3_k_s"))
    assert [p.name for p in split.paths] == ["tiny-Q3_K_S-00001-of-00002.gguf", "tiny-Q3_K_S-00002-of-00002.gguf"]
    assert [p.stat().st_size for p in split.paths] == [1600, 1700]  # in a folder of their own: no projector


def test_resume_after_a_cut_connection(hub: Hub, fake_hub: FakeHub):
    fake_hub.cut_next("tiny-Q4_0.gguf")
    pulled = hub.fetch(parse_ref(f"{TINY}:Q4_0"))
    assert pulled.paths[0].read_bytes() == fake_hub.repos[TINY]["tiny-Q4_0.gguf"].source.read_bytes()
    gets = [r for r in fake_hub.requests_for("tiny-Q4_0.gguf") if r.method == "GET"]
    assert [r.range is not None for r in gets] == [False, True], gets  # the second asked only for the rest
    assert gets[1].range is not None and gets[1].range.startswith("bytes=") and gets[1].range != "bytes=0-"


def test_errors_name_the_missing_repo_quant_or_gguf(hub: Hub):
    with pytest.raises(HubError, match="no such model repository: nomoat-test/nope"):
        hub.fetch(parse_ref("nomoat-test/nope"))
    with pytest.raises(HubError, match=r"nomoat-test/tiny .*has no Q5_K_M file; its quantisations: Q2_K, Q3_K_S, "
                                       r"Q4_0, Q8_0"):
        hub.fetch(parse_ref(f"{TINY}:Q5_K_M"))
    with pytest.raises(HubError, match=r"nomoat-test/no-gguf .*has no GGUF model files"):
        hub.fetch(parse_ref("nomoat-test/no-gguf"))


def test_offline_uses_the_cache_and_names_what_is_not_there(hub: Hub, fake_hub: FakeHub, tmp_path: Path):
    hub.fetch(parse_ref(f"{TINY}:Q8_0"))
    asked = len(fake_hub.requests)
    offline = Hub(endpoint=fake_hub.url, cache_dir=hub.cache_dir, offline=True)
    with_projector = ("tiny-Q8_0.gguf", "mmproj-tiny-f16.gguf")
    assert offline.fetch(parse_ref(f"{TINY}:q8_0")).files == with_projector
    assert offline.fetch(parse_ref(TINY)).files == with_projector  # no name asked: what the cache has
    with pytest.raises(HubError, match=r"nomoat-test/tiny:Q2_K: not in the Hugging Face cache .*offline mode"):
        offline.fetch(parse_ref(f"{TINY}:Q2_K"))
    assert len(fake_hub.requests) == asked
    # The Hub out of reach: the cached copy serves, an uncached one is a clear error.
    gone = Hub(endpoint="http://127.0.0.1:9", cache_dir=hub.cache_dir, offline=False)
    assert gone.fetch(parse_ref(TINY)).files == with_projector
    with pytest.raises(HubError, match=r"nomoat-test/other: cannot reach the Hub at http://127\.0\.0\.1:9"):
        gone.fetch(parse_ref("nomoat-test/other"))


def test_hf_path_in_models_toml_resolves_through_the_cache(hub: Hub, fake_hub: FakeHub, monkeypatch, tmp_path,
                                                           caplog):
    # What HF_ENDPOINT and HF_HOME say in a server's environment (huggingface_hub reads them once, at import).
    monkeypatch.setattr("nomoat.store.hub.Hub", lambda **kw: Hub(endpoint=fake_hub.url, cache_dir=hub.cache_dir, **kw))
    with caplog.at_level(logging.INFO, logger="nomoat.store"):
        path = config.resolve_model_path(f"hf:{TINY}:Q8_0", tmp_path, "models.0.path")
    assert "pulling tiny-Q8_0.gguf from" in caplog.text and "downloaded 100% of 0.0 MB" in caplog.text  # no bar
    assert path == hub.cached(parse_ref(f"{TINY}:Q8_0")).paths[0]
    asked = len(fake_hub.requests)
    assert config.resolve_model_path(f"hf:{TINY}:Q8_0", tmp_path, "models.0.path") == path
    assert len(fake_hub.requests) == asked  # cached: the Hub is not asked again
    with pytest.raises(config.ConfigError, match=r"models.0.path: .*has no Q5_K_M file"):
        config.resolve_model_path(f"hf:{TINY}:Q5_K_M", tmp_path, "models.0.path")
    monkeypatch.setenv("NOMOAT_STATE_DIR", str(tmp_path / "state"))
    _, models = config.load({"model": Path(f"hf:{TINY}:Q8_0")})
    assert [(m.name, m.path) for m in models.models] == [(f"{TINY}:Q8_0", str(path))]


# --- the command line and a real server ------------------------------------------------------------


def nomoat(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_nomoat(*args, env=env, cwd=Path(env["HOME"]))


@pytest.fixture()
def hub_env(fake_hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NOMOAT_", "HF_"))}
    return {**clean, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HF_ENDPOINT": fake_hub.url,
            "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "NOMOAT_STATE_DIR": str(tmp_path / "state"),
            # No server there: pull, ls and rm work on this disk (a server on the default port would be asked).
            "NOMOAT_PORT": str(free_port())}


def test_pull_serve_ls_rm(hub_env: dict[str, str], tmp_path: Path):
    pulled = nomoat(hub_env, "pull", SMOL)
    assert pulled.returncode == 0, pulled.stderr
    assert f"serve it as model '{SMOL}'" in pulled.stdout
    manifest = json.loads((tmp_path / "state" / "pulled.json").read_text())
    assert [(m["name"], m["files"]) for m in manifest["models"]] == [(SMOL, ["smol-Q4_K_M.gguf"])]

    workdir = tmp_path / "server"
    workdir.mkdir()
    (workdir / "models").mkdir()
    (workdir / "models" / "copy.gguf").symlink_to(config.embedded_model_path())
    toml = f'[[models]]\nname = "smol-q8"\npath = "hf:{SMOL}:Q8_0"\nn_ctx = 512\nparallel = 1\n'
    server = ServerProcess(toml, workdir, "--models-dir", str(workdir / "models"), "--parallel", "1",
                           env={**hub_env, "NOMOAT_STATE_DIR": str(tmp_path / "state")})
    try:
        server.wait_ready(timeout=300)
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert ids[:3] == ["smol-q8", "copy", SMOL]
            for model in (SMOL, "copy"):
                body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                        "logit_bias": NO_EOS}
                answer = client.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                assert answer.json()["model"] == model and answer.json()["usage"]["completion_tokens"] == 4
    finally:
        server.stop()

    listed = nomoat(hub_env, "ls", "--config", str(server.config), "--models-dir", str(workdir / "models"))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split(None, 4) for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("smol-q8", "models.toml"), ("copy", "models-dir"), (SMOL, "pulled")]
    assert all(r[2:4] == ["98.4", "MB"] for r in rows), listed.stdout
    assert rows[2][4].endswith("/smol-Q4_K_M.gguf")

    refused = nomoat(hub_env, "rm", "smol-q8")
    assert refused.returncode == 1 and f"'smol-q8' is not a pulled model (pulled models: {SMOL})" in refused.stderr
    removed = nomoat(hub_env, "rm", SMOL)
    assert removed.returncode == 0, removed.stderr
    after = nomoat(hub_env, "ls", "--config", str(server.config))
    assert SMOL not in after.stdout.split() and "smol-q8" in after.stdout
    snapshot = Path(rows[2][4]).parent
    # Both names hold the same bytes: one blob, kept while models.toml's Q8_0 still links to it.
    assert not (snapshot / "smol-Q4_K_M.gguf").exists()
    assert (snapshot / "smol-Q8_0.gguf").stat().st_size == config.embedded_model_path().stat().st_size


def test_pull_offline_from_the_cache_and_errors(hub_env: dict[str, str], fake_hub: FakeHub):
    assert nomoat(hub_env, "pull", f"{TINY}:Q8_0").returncode == 0
    offline = {**hub_env, "HF_HUB_OFFLINE": "1"}
    asked = len(fake_hub.requests)
    again = nomoat(offline, "pull", f"{TINY}:q8_0")
    assert again.returncode == 0, again.stderr
    missing = nomoat(offline, "pull", f"{TINY}:Q2_K")
    assert missing.returncode == 1
    assert "nomoat-test/tiny:Q2_K: not in the Hugging Face cache" in missing.stderr
    assert len(fake_hub.requests) == asked
    no_repo = nomoat(hub_env, "pull", "nomoat-test/nope:Q4_K_M")
    assert no_repo.returncode == 1 and "no such model repository: nomoat-test/nope" in no_repo.stderr
    listed = nomoat(hub_env, "ls")
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert names == ["smollm2-135m", f"{TINY}:Q8_0", f"{TINY}:q8_0"]  # each name as pulled
    # Two names for one file: removing one keeps the file for the other.
    assert nomoat(hub_env, "rm", f"{TINY}:Q8_0").returncode == 0
    rows = [line.split() for line in nomoat(hub_env, "ls").stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["smollm2-135m", f"{TINY}:q8_0"]
    assert Path(rows[1][4]).stat().st_size == 3000


# --- a hostile or broken Hub (#28) ------------------------------------------------------------------

# Five levels up from snapshots/<commit>/ is HOME (tmp_path): where a traversing name would land.
TRAVERSING = "../../../../../escape-Q4_K_M.gguf"


def add_hostile_repos(hub: FakeHub, src: Path, model: Path, outside: Path) -> None:
    html = src / "page.html"
    html.write_bytes(b"<!DOCTYPE html><html><body>Rate limited, try again later</body></html>\n" * 40)
    lying = tiny_model(block_count=(V.UINT32, 2**28)).write(src / "lying")  # 2**28 layers in a 1.5 kB file
    hub.add_repo("nomoat-test/traversal", {TRAVERSING: model})
    hub.add_repo("nomoat-test/absolute", {str(outside / "abs-Q4_K_M.gguf"): model})
    for how in ("oversize", "endless", "dribble"):
        hub.add_repo(f"nomoat-test/{how}", {f"{how}-Q4_K_M.gguf": model})
        hub.misbehave(f"{how}-Q4_K_M.gguf", how)  # type: ignore[arg-type]
    hub.add_repo("nomoat-test/html", {"page-Q4_K_M.gguf": html})
    hub.add_repo("nomoat-test/lying", {"lying-Q4_K_M.gguf": lying})
    hub.add_repo("nomoat-test/unsized", {"unsized-Q4_K_M.gguf": model})
    hub.unsized.add("unsized-Q4_K_M.gguf")


@pytest.mark.parametrize("repo, reason", [
    ("traversal", f"nomoat-test/traversal on http://127.0.0.1:{{port}} lists files outside the repository "
                  f"('{TRAVERSING}'); nothing was downloaded"),
    ("absolute", "lists files outside the repository ('/"),
    ("oversize", "the Hub sent more of oversize-Q4_K_M.gguf than the 3000 bytes its listing announces; "
                 "the download was stopped"),
    ("endless", "the Hub sent more of endless-Q4_K_M.gguf than the 3000 bytes its listing announces"),
    ("dribble", "the Hub took longer than pull_timeout_seconds (2 s); the download was stopped"),
    ("html", "nomoat-test/html/page-Q4_K_M.gguf from http://127.0.0.1:{port} is not a usable GGUF model (not a GGUF "
             "file (no GGUF magic)); it was removed from the cache and not registered"),
    ("lying", "(llama.block_count is 268435456, outside 0..3 (each layer has tensors, and the model holds 3)); "
              "it was removed"),
    ("unsized", "unsized-Q4_K_M.gguf: the Hub at http://127.0.0.1:{port} does not announce its size"),
])
def test_pull_from_a_hostile_hub_fails_cleanly_and_writes_nothing_outside_the_cache(
        hub_env: dict[str, str], fake_hub: FakeHub, tmp_path: Path, outside: Path, repo: str, reason: str):
    pulled = nomoat(hub_env, "pull", f"nomoat-test/{repo}", "--pull-timeout-seconds", "2")
    assert pulled.returncode == 1, pulled.stderr
    assert "Traceback" not in pulled.stderr, pulled.stderr
    error = pulled.stderr.split(f"nomoat: cannot pull nomoat-test/{repo}:\n", 1)[-1].strip()
    assert reason.format(port=fake_hub.url.rsplit(":", 1)[1]) in error and "\n" not in error, pulled.stderr
    assert not (tmp_path / "state" / "pulled.json").exists(), "nothing registered"
    cache = tmp_path / "hf" / "hub"
    written = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()]
    assert [p for p in written if not p.is_relative_to(cache)] == [], "nothing written outside the cache"
    assert [p for p in written if "blobs" in p.parts or "snapshots" in p.parts] == [], "nothing of it kept"
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape-Q4_K_M.gguf").exists()


def test_ls_without_models_toml_names_the_built_in_model(hub_env: dict[str, str]):
    """With no models.toml anywhere (and no server), `nomoat ls` lists the embedded model as built-in, not as a
    models.toml model that does not exist; a --model file (NOMOAT_MODEL) as --model."""
    listed = nomoat(hub_env, "ls")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split(None, 4) for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("smollm2-135m", "built-in")]
    single = nomoat({**hub_env, "NOMOAT_MODEL": rows[0][4]}, "ls")
    assert [line.split()[1] for line in single.stdout.splitlines()[1:]] == ["--model"], single.stdout + single.stderr
