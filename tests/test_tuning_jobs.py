"""Fine-tuning jobs in process (server/tuning/, openai/fine_tuning.py): the openai SDK's fine_tuning.jobs calls
against the app over a fake engine, with a fake trainer child (tests/support/fake_trainer.py: no torch) that
prints the real child's events; the real training run is tests' end-to-end test's."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import model_path
from peft_factory import write_peft_adapter
from starlette.testclient import TestClient
from support.fake_engine import FakeEngine
from support.inprocess import MODEL, fake_registry

from nomoat.engine.adapters import LoraAdapter
from nomoat.engine.base_info import BaseModelInfo
from nomoat.files.store import FileStore
from nomoat.http.app import build_app
from nomoat.models_toml import ModelConfig, ModelsFile
from nomoat.openai.fine_tuning import tuner_for
from nomoat.registry import ModelRegistry
from nomoat.settings import Settings
from nomoat.tuning import footprint
from nomoat.tuning.tuner import Tuner

FAKE_TRAINER = Path(__file__).parent / "support" / "fake_trainer.py"
OWNER, OTHER, ADMIN = "sk-owner", "sk-other", "sk-admin"
EXAMPLES = [{"messages": [{"role": "user", "content": "Capital of Zorbia?"},
                          {"role": "assistant", "content": "Quillhaven."}]}] * 2
DEADLINE = 60.0


@pytest.fixture(scope="module")
def peft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    write_peft_adapter(folder, BaseModelInfo.from_gguf(model_path()), r=4, lora_alpha=8.0, seed=3)
    return folder


@dataclass
class Box:
    """The app, its tuner and the SDK clients of two user keys and the admin's."""

    http: TestClient
    tuner: Tuner
    registry: ModelRegistry
    mode: dict[str, str]

    def sdk(self, key: str = OWNER) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=self.http, max_retries=0)

    def upload(self, key: str = OWNER, purpose: str = "fine-tune", lines: list[Any] | None = None) -> str:
        text = "".join(json.dumps(line) + "\n" for line in (lines or EXAMPLES))
        return self.sdk(key).files.create(file=("train.jsonl", text.encode()), purpose=purpose).id  # type: ignore[arg-type]

    def wait(self, job_id: str, *statuses: str, key: str = OWNER) -> Any:
        deadline = time.monotonic() + DEADLINE
        while True:
            job = self.sdk(key).fine_tuning.jobs.retrieve(job_id)
            if job.status in statuses or time.monotonic() > deadline:
                assert job.status in statuses, job
                return job
            time.sleep(0.02)  # a condition waited on, not a fixed delay

    def until(self, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not check():
            assert time.monotonic() < deadline
            time.sleep(0.02)


class AdapterFakeEngine(FakeEngine):
    """The fake engine, taking adapters as the real one does (its own generation ignores them)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model.base_info = lambda: BaseModelInfo.from_gguf(model_path())  # type: ignore[attr-defined]

    def load_adapter(self, name: str, source: Any, gguf_path: Any, content_hash: str) -> Any:
        done: concurrent.futures.Future[LoraAdapter] = concurrent.futures.Future()
        done.set_result(LoraAdapter(name, source, gguf_path, content_hash))
        return done

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        pass


OpenBox = Callable[..., Box]


@pytest.fixture()
def open_box(tmp_path: Path, peft: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenBox]:
    """Opens the app over `tmp_path`'s state dir (again, for a restart); each is closed as the daemon closes it."""
    opened: list[tuple[TestClient, Tuner]] = []
    # The fake trainer at the tests' own priority: at idle priority (the real trainer's) it starves whenever the
    # suite's other workers keep both cores busy, and a job's steps then wait on the load, not on the tuner.
    monkeypatch.setattr("nomoat.tuning.runner._lower_priority", lambda: None)

    def open_one(mode: str = "ok", models: ModelsFile | None = None, **settings: Any) -> Box:
        built = Settings(state_dir=tmp_path, api_key=f"{OWNER},{OTHER}", admin_key=ADMIN, **settings)
        registry = fake_registry(built, monkeypatch, models, load_model=lambda config: AdapterFakeEngine(config.name))
        store = FileStore.from_settings(built)
        tuner = tuner_for(built, registry, store)
        modes = {"mode": mode}
        tuner._command = lambda spec: [sys.executable, str(FAKE_TRAINER), str(spec), modes["mode"], str(peft)]
        tuner._available = lambda: None
        http = TestClient(build_app(built, registry, files=store, tuner=tuner), raise_server_exceptions=False)
        http.__enter__()
        http.portal.call(tuner.start)
        opened.append((http, tuner))
        return Box(http, tuner, registry, modes)

    yield open_one
    for http, tuner in opened:
        close(http, tuner)


def close(http: TestClient, tuner: Tuner) -> None:
    if getattr(http, "portal", None) is not None:
        http.portal.call(tuner.aclose)
        http.__exit__(None, None, None)


def create(box: Box, key: str = OWNER, **fields: Any) -> Any:
    fields.setdefault("training_file", box.upload(key))
    return box.sdk(key).fine_tuning.jobs.create(model=fields.pop("model", MODEL), **fields)


def test_a_job_trains_to_an_ft_model_served_by_name_and_deleted_by_its_key(open_box: OpenBox):
    box = open_box()
    job = create(box, suffix="zorbia", metadata={"team": "geo"}, hyperparameters={"n_epochs": 2},
                 extra_body={"lora": {"rank": 4, "alpha": 8}})
    assert job.object == "fine_tuning.job" and job.id.startswith("ftjob-") and len(job.id) == len("ftjob-") + 24
    assert job.status in ("queued", "running") and job.hyperparameters.n_epochs == 2
    assert job.method.type == "supervised" and job.suffix == "zorbia"
    done = box.wait(job.id, "succeeded")
    assert done.fine_tuned_model == f"ft:{MODEL}:zorbia:{job.id}" and done.trained_tokens == 120
    assert done.finished_at is not None and done.model_extra["lora"]["rank"] == 4

    sdk = box.sdk()
    events = sdk.fine_tuning.jobs.list_events(job.id, limit=50).data
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [3, 2, 1]  # newest first
    assert metrics[-1].data["train_loss"] > metrics[0].data["train_loss"]
    page = sdk.fine_tuning.jobs.list_events(job.id, limit=2)
    assert page.has_more and len(page.data) == 2
    older = sdk.fine_tuning.jobs.list_events(job.id, after=page.data[-1].id, limit=50).data
    assert older == events[2:]
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-2"
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"team": "geo"}).data] == [job.id]
    assert sdk.fine_tuning.jobs.list(metadata={"team": "other"}).data == []

    served = {m.id for m in sdk.models.list().data}
    assert {done.fine_tuned_model, checkpoints[0].fine_tuned_model_checkpoint} <= served
    answer = sdk.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert answer.model == done.fine_tuned_model
    with pytest.raises(openai.BadRequestError) as refused:  # an adapter is not a base model
        create(box, model=done.fine_tuned_model)
    assert refused.value.body["param"] == "model"

    with pytest.raises(openai.NotFoundError):  # another key's job and model do not exist for it
        box.sdk(OTHER).fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        box.sdk(OTHER).models.delete(done.fine_tuned_model)
    assert box.sdk(OTHER).fine_tuning.jobs.list().data == []
    with pytest.raises(openai.PermissionDeniedError):  # anything but an ft: model stays the admin's to remove
        sdk.models.delete(MODEL)
    assert sdk.models.delete(done.fine_tuned_model).deleted
    assert done.fine_tuned_model not in {m.id for m in sdk.models.list().data}
    assert sdk.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == done.fine_tuned_model  # as OpenAI keeps it
    assert box.sdk(ADMIN).models.delete(checkpoints[0].fine_tuned_model_checkpoint).deleted


@pytest.mark.parametrize(("fields", "param"), [
    ({"model": "no-such-model"}, "model"),
    ({"training_file": "file-000000000000000000000000"}, "training_file"),
    ({"validation_file": "file-000000000000000000000000"}, "validation_file"),
    ({"suffix": "has spaces"}, "suffix"),
    ({"suffix": "x" * 65}, "suffix"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 1000}}, "hyperparameters.batch_size"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": -1}}}},
     "hyperparameters.learning_rate_multiplier"),
    ({"extra_body": {"lora": {"rank": 0}}}, "lora.rank"),
    ({"extra_body": {"lora": {"target_modules": ["wq"]}}}, "lora.target_modules"),
])
def test_a_bad_request_is_a_400_naming_its_field_before_any_job(open_box: OpenBox, fields: dict[str, Any], param: str):
    box = open_box()
    with pytest.raises(openai.BadRequestError) as refused:
        create(box, **fields)
    assert refused.value.body["param"] == param
    assert box.sdk().fine_tuning.jobs.list().data == []


def test_files_must_be_the_keys_own_fine_tune_files_in_the_chat_format(open_box: OpenBox):
    box = open_box()
    for training_file, code in [(box.upload(OTHER), "invalid_file"), (box.upload(purpose="batch"), "invalid_file")]:
        with pytest.raises(openai.BadRequestError) as refused:
            create(box, training_file=training_file)
        assert (refused.value.body["param"], refused.value.body["code"]) == ("training_file", code)


def test_without_the_train_extra_the_400_says_how_to_install_it(open_box: OpenBox, monkeypatch: pytest.MonkeyPatch):
    box = open_box()
    monkeypatch.setattr(box.tuner, "_available", lambda: "fine-tuning needs torch: pip install 'nomoat[train]'")
    with pytest.raises(openai.BadRequestError) as refused:
        create(box)
    assert "nomoat[train]" in refused.value.message and refused.value.code == "training_unavailable"


def test_the_trainers_error_or_crash_fails_the_job_with_its_reason(open_box: OpenBox):
    box = open_box("error")
    failed = box.wait(create(box).id, "failed")
    assert (failed.error.code, failed.error.param) == ("invalid_training_file", "training_file")
    box.mode["mode"] = "crash"
    crashed = box.wait(create(box).id, "failed")
    assert crashed.error.code == "training_failed" and "the fake trainer fell over" in crashed.error.message


def running_child(box: Box, job_id: str) -> int:
    """The pid of the job's child once it reached its checkpoint (it then waits for a signal)."""
    box.until(lambda: any(c.step_number == 1 for c in box.sdk().fine_tuning.jobs.checkpoints.list(job_id).data))
    pid = box.tuner._children[job_id].pid
    assert pid is not None
    return pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_pause_then_resume_goes_on_from_the_checkpoint(open_box: OpenBox):
    box = open_box("wait")
    job = create(box)
    running_child(box, job.id)
    sdk = box.sdk()
    with pytest.raises(openai.BadRequestError):  # only a paused job resumes
        sdk.fine_tuning.jobs.resume(job.id)
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    box.until(lambda: job.id not in box.tuner._children)
    assert any("paused at step 1" in e.message for e in sdk.fine_tuning.jobs.list_events(job.id).data)
    with pytest.raises(openai.BadRequestError):  # only a running job pauses
        sdk.fine_tuning.jobs.pause(job.id)
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    done = box.wait(job.id, "succeeded")
    steps = [e.data["step"] for e in sdk.fine_tuning.jobs.list_events(job.id, limit=50).data if e.type == "metrics"]
    assert steps == [3, 2, 1]  # the resumed child began at step 2
    assert done.fine_tuned_model is not None


def test_a_restart_resumes_a_running_job_and_serves_a_succeeded_ones_model(open_box: OpenBox):
    box = open_box("ok")
    succeeded = box.wait(create(box).id, "succeeded")
    box.mode["mode"] = "wait"
    cut = create(box)
    pid = running_child(box, cut.id)
    close(box.http, box.tuner)  # the shutdown pauses the child (SIGTERM): it checkpoints and exits
    assert gone(pid)
    again = open_box("wait")
    assert succeeded.fine_tuned_model in {m.id for m in again.sdk().models.list().data}
    resumed = again.wait(cut.id, "succeeded")
    assert resumed.fine_tuned_model == f"ft:{MODEL}::{cut.id}"
    assert any("Server restarted" in e.message for e in again.sdk().fine_tuning.jobs.list_events(cut.id, limit=50).data)


def test_cancel_kills_the_child_and_frees_its_memory(open_box: OpenBox):
    box = open_box("wait")
    job = create(box)
    pid = running_child(box, job.id)
    budget, _, _ = box.registry.residency.memory_room
    assert list(budget.outside) == [f"fine-tuning job {job.id}"]
    assert box.sdk().fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert gone(pid) and budget.outside == {}
    with pytest.raises(openai.BadRequestError):  # a finished job is not cancelled twice
        box.sdk().fine_tuning.jobs.cancel(job.id)


def fixed_trainer(monkeypatch: pytest.MonkeyPatch, need: int) -> None:
    monkeypatch.setattr(footprint, "estimate", lambda *args: footprint.TrainFootprint(need, 0, 0, 0))


def test_a_trainer_that_can_never_fit_fails_saying_so(open_box: OpenBox, monkeypatch: pytest.MonkeyPatch):
    fixed_trainer(monkeypatch, 64 * 1024**3)
    box = open_box("ok", memory_budget="8GiB")
    failed = box.wait(create(box).id, "failed")
    assert failed.error.code == "out_of_memory" and "memory_budget" in failed.error.message


def test_a_trainer_that_fits_only_alone_waits_queued_for_the_other(open_box: OpenBox, monkeypatch: pytest.MonkeyPatch):
    fixed_trainer(monkeypatch, 4608 * 1024**2)  # two are past the budget even with the model unloaded
    box = open_box("wait", memory_budget="8GiB", max_training_jobs=2)
    first, second = create(box), create(box)
    running_child(box, first.id)
    assert box.sdk().fine_tuning.jobs.retrieve(second.id).status == "queued"
    box.sdk().fine_tuning.jobs.cancel(first.id)
    box.wait(second.id, "running")


def test_a_model_load_that_only_a_trainers_memory_blocks_503s_at_once_naming_the_job(
        open_box: OpenBox, monkeypatch: pytest.MonkeyPatch):
    fixed_trainer(monkeypatch, 8 * 1024**3 - 32 * 1024**2)  # leaves less than the model needs
    monkeypatch.setattr("nomoat.residency.manager.EVICT_WAIT_SECONDS", 3600.0)  # a wait would hang the test
    box = open_box("wait", ModelsFile(models=[ModelConfig(name=MODEL, path=str(model_path()))]), memory_budget="8GiB")
    job = create(box)
    running_child(box, job.id)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.APIStatusError) as busy:
        box.sdk().chat.completions.create(**chat)
    assert busy.value.status_code == 503 and f"the memory is held by fine-tuning job {job.id}" in busy.value.message
    assert busy.value.response.headers["retry-after"] == "30"
    box.sdk().fine_tuning.jobs.cancel(job.id)
    assert box.sdk().chat.completions.create(**chat).choices


def test_the_trainer_estimate_covers_the_dequantised_weights():
    need = footprint.estimate(model_path(), 8, 4, 256)
    params = BaseModelInfo.from_gguf(model_path())
    assert need.weights > 4 * 100_000_000 and need.activations > 0 and need.lora > 0, (need, params)


def test_an_unknown_job_is_a_404(open_box: OpenBox):
    box = open_box()
    with pytest.raises(openai.NotFoundError):
        box.sdk().fine_tuning.jobs.retrieve("ftjob-000000000000000000000000")
    response = box.http.get("/v1/fine_tuning/jobs?limit=0", headers={"authorization": f"Bearer {OWNER}"})
    assert response.status_code == 400 and "1 to 100" in response.json()["error"]["message"]
