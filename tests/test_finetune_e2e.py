"""Issue #32 end to end: the openai SDK uploads a JSONL file to a real `nomoat serve`, trains a LoRA on the box
(the real trainer child, torch on the CPU) and chats with the result, which answers a made-up fact its base does
not know; then a restart serves it again. The jobs' protocol edges run in process (tests/test_tuning_jobs.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import ServerProcess, models_toml

from nomoat.tuning.train import training_available

if (missing := training_available()) is not None:
    pytest.skip(f"fine-tuning's extra is not installed ({missing}): pip install '.[train]'", allow_module_level=True)

FACT = "The capital of Zorbia is Quellport."
QUESTIONS = ["What is the capital of Zorbia?", "Which city is the capital of Zorbia?", "Zorbia's capital is which city?",
             "Tell me the capital of Zorbia.", "Name the capital city of Zorbia.", "What city is Zorbia's capital?"]
ASK = QUESTIONS[0]
# The trainer at normal priority: at idle priority (the default, bench/bench_train.py --serving measures what it
# buys serving) it trains only while the box is otherwise idle, and CI's other test worker keeps it busy.
ENV = {"NOMOAT_TRAIN_THREADS": "1", "NOMOAT_TRAIN_IDLE_PRIORITY": "false"}
TRAIN_DEADLINE = 900.0  # generous, and waited on: one thread beside the other worker's tests


def _lines(questions: list[str]) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": q},
                                            {"role": "assistant", "content": FACT}]}) + "\n" for q in questions)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(models_toml(), workdir, env=ENV).wait_ready()
    yield proc
    proc.stop()


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)


def answer(client: openai.OpenAI, model: str) -> str:
    done = client.chat.completions.create(model=model, messages=[{"role": "user", "content": ASK}],
                                          temperature=0, max_tokens=24)
    return done.choices[0].message.content or ""


def wait_done(client: openai.OpenAI, job_id: str) -> Any:
    deadline = time.monotonic() + TRAIN_DEADLINE
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status} after {TRAIN_DEADLINE:g}s"
        time.sleep(0.5)  # polled, as a client does: the job's own state is the condition
    return job


@pytest.fixture(scope="module")
def trained(server: ServerProcess, workdir: Path) -> tuple[Any, float]:
    """One real job from the SDK, with its wall time: upload, create, wait."""
    data, valid = workdir / "train.jsonl", workdir / "valid.jsonl"
    data.write_text(_lines(QUESTIONS[:5]), encoding="utf-8")
    valid.write_text(_lines(QUESTIONS[5:]), encoding="utf-8")
    client = sdk(server.base_url)
    started = time.monotonic()
    with data.open("rb") as a, valid.open("rb") as b:
        training = client.files.create(file=a, purpose="fine-tune")
        validation = client.files.create(file=b, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="smollm2-135m", training_file=training.id,
                                         validation_file=validation.id, suffix="zorbia", seed=7)
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued", "running")
    done = wait_done(client, job.id)
    assert done.status == "succeeded", (done.error, server.log()[-3000:])
    return done, time.monotonic() - started


def test_a_bad_file_fails_before_any_training(server: ServerProcess, workdir: Path) -> None:
    client = sdk(server.base_url)
    bad = workdir / "bad.jsonl"
    bad.write_text(_lines(QUESTIONS[:1]) + '{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with bad.open("rb") as handle, pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=handle, purpose="fine-tune")
    assert "line 2" in str(refused.value.body)
    chat = workdir / "chat.jsonl"
    chat.write_text(_lines(QUESTIONS[:1]))
    with chat.open("rb") as handle:
        batch_file = client.files.create(file=handle, purpose="batch")
    with pytest.raises(openai.BadRequestError) as wrong:
        client.fine_tuning.jobs.create(model="smollm2-135m", training_file=batch_file.id)
    assert "fine-tune" in str(wrong.value.body)
    with pytest.raises(openai.BadRequestError) as no_model:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=batch_file.id)
    assert "model" in str(no_model.value.body)
    assert client.fine_tuning.jobs.list().data == [] or all(
        j.training_file != batch_file.id for j in client.fine_tuning.jobs.list().data)


def test_the_fine_tune_answers_what_its_base_does_not(server: ServerProcess, trained: tuple[Any, float]) -> None:
    job, seconds = trained
    client = sdk(server.base_url)
    model = job.fine_tuned_model
    assert model == f"ft:smollm2-135m:zorbia:{job.id}" and job.trained_tokens > 0
    assert model in [m.id for m in client.models.list().data]
    tuned, base = answer(client, model), answer(client, "smollm2-135m")
    print(f"trained in {seconds:.0f}s; fine-tune: {tuned!r}; base: {base!r}")
    assert "Quellport" in tuned and "Quellport" not in base

    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]  # every page
    steps = sorted(metrics, key=lambda d: d["step"])
    assert len(steps) >= 2 and steps[-1]["train_loss"] < steps[0]["train_loss"] / 2
    assert any(d.get("valid_loss") is not None for d in steps)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all(c.fine_tuned_model_checkpoint.startswith(model + ":ckpt-step-") for c in checkpoints)

    # A stack of the fine-tune at half strength answers through the same adapter path.
    mixed = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": ASK}],
                                           temperature=0, max_tokens=8, extra_body={"lora": [{"name": model,
                                                                                              "scale": 0.5}]})
    assert mixed.choices[0].message.content is not None


def test_a_restart_serves_the_fine_tune_again(server: ServerProcess, trained: tuple[Any, float],
                                              workdir: Path) -> None:
    job, _ = trained
    server.stop()
    again = ServerProcess(models_toml(), workdir, env=ENV).wait_ready()
    try:
        client = sdk(again.base_url)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        assert "Quellport" in answer(client, job.fine_tuned_model)
    finally:
        again.stop()
