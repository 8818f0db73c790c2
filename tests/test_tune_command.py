"""`nomoat tune` against OpenAI's fine-tuning routes (faked over a real socket: a job moves a step per look): the
upload and the job it creates, a line per training step, the model id at the end, a failure's exit code and
error, --detach, Ctrl+C leaving the job running, --watch and --cancel, and its help."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_tuning import FakeTuning
from support.threaded import ServedInThread

from nomoat import tune_command
from nomoat.cli import build_parser, main
from nomoat.client import ServerClient
from nomoat.settings import Settings
from nomoat.tune_command import INTERRUPTED, Tuner

MODEL = "smollm2-135m"
EXAMPLE = {"messages": [{"role": "user", "content": "Capital of Zorbia?"}, {"role": "assistant", "content": "Quellport."}]}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTuning]:
    for name in ("NOMOAT_HOST", "NOMOAT_PORT", "NOMOAT_API_KEY", "NOMOAT_ADMIN_KEY", "NOMOAT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tune_command, "POLL_SECONDS", 0.01)
    tuning = FakeTuning()
    served = ServedInThread(tuning)
    tuning.url = served.url
    yield tuning
    served.stop()


def nomoat_tune(fake: FakeTuning, *args: str) -> int:
    return main(["tune", *args, "--host", fake.url])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(EXAMPLE) + "\n")
    return path


def test_tune_uploads_starts_and_shows_each_step_until_the_model_id(fake, data, capsys, monkeypatch):
    monkeypatch.setattr(tune_command, "EVENTS_PAGE", 2)  # more events than a page between looks: paged with after
    fake.steps = 5
    assert nomoat_tune(fake, MODEL, str(data), "--suffix", "zorbia", "--epochs", "2", "--validation-file", str(data)) == 0
    out = capsys.readouterr().out
    assert fake.uploads["file-0"] == ("fine-tune", data.read_bytes())
    job = fake.jobs["ftjob-0"]
    assert job.body == {"model": MODEL, "training_file": "file-0", "validation_file": "file-1", "suffix": "zorbia",
                        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert steps[0] == "step 1/5  train loss 3.0000  valid loss 3.2000  accuracy 0.5000"
    assert [line.split()[1] for line in steps] == ["1/5", "2/5", "3/5", "4/5", "5/5"]  # each once, in order
    assert "uploaded train.jsonl as file-0" in out and "status: running" in out and "status: succeeded" in out
    assert f"fine-tuned model: ft:{MODEL}:zorbia:ftjob-0 (1,234 tokens trained)" in out
    assert out.rstrip().endswith(f"chat with it: nomoat run ft:{MODEL}:zorbia:ftjob-0")


def test_a_failed_job_exits_1_with_its_error(fake, data, capsys):
    fake.outcome = "failed"
    assert nomoat_tune(fake, MODEL, str(data)) == 1
    captured = capsys.readouterr()
    assert "step 3/3" in captured.out and "error: the loss became NaN" in captured.out
    assert "nomoat tune: job ftjob-0 failed: the loss became NaN (training_diverged)" in captured.err
    assert "method" not in fake.jobs["ftjob-0"].body  # no hyperparameters given: none sent, the server's "auto"


def test_detach_starts_the_job_and_says_how_to_follow_it(fake, data, capsys, monkeypatch):
    monkeypatch.setenv("NOMOAT_API_KEY", "user-a,user-b")
    monkeypatch.setenv("NOMOAT_ADMIN_KEY", "admin")
    assert nomoat_tune(fake, MODEL, str(data), "--detach") == 0
    out = capsys.readouterr().out
    assert "started fine-tuning job ftjob-0" in out and "nomoat tune --watch ftjob-0" in out
    assert fake.jobs["ftjob-0"].status == "validating_files"  # never looked at again
    assert fake.keys == ["Bearer user-a"]  # the job is the API key's (as the page's), not the admin key's


def test_ctrl_c_leaves_the_job_running_then_watch_and_cancel_find_it(fake, data, capsys):
    fake.outcome = "hold"
    looks = iter(range(3))

    def interrupted_on_the_third_wait(seconds: float) -> None:
        if next(looks, None) is None:
            raise KeyboardInterrupt

    client = ServerClient(Settings())
    client.url = fake.url
    out, err = io.StringIO(), io.StringIO()
    tuner = Tuner(client, out, err, sleep=interrupted_on_the_third_wait)
    assert tuner.start(MODEL, str(data), tune_command.TuneOptions()) == INTERRUPTED
    assert "step 2" in out.getvalue()
    assert "stopped watching; job ftjob-0 goes on" in err.getvalue() and "nomoat tune --cancel ftjob-0" in err.getvalue()
    assert fake.jobs["ftjob-0"].status == "running"
    assert nomoat_tune(fake, "--cancel", "ftjob-0") == 0
    assert fake.jobs["ftjob-0"].status == "cancelled"
    assert nomoat_tune(fake, "--watch", "ftjob-0") == 1
    captured = capsys.readouterr()
    assert "step 1/3" in captured.out and "job ftjob-0 cancelled" in captured.err  # the whole history, then the end


def test_refusals_and_unreadable_files(fake, tmp_path, capsys):
    assert nomoat_tune(fake, "--watch", "ftjob-nope") == 1
    assert "nomoat tune: no such job" in capsys.readouterr().err
    assert nomoat_tune(fake, MODEL, str(tmp_path / "missing.jsonl")) == 2
    assert "cannot read" in capsys.readouterr().err and not fake.jobs
    with pytest.raises(SystemExit) as usage:
        nomoat_tune(fake, MODEL)
    assert usage.value.code == 2 and "MODEL and FILE are required" in capsys.readouterr().err


def test_tune_has_help_of_its_own():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "tune" in a.choices).choices  # type: ignore[operator]
    text = sub["tune"].format_help()
    for shown in ("--suffix", "--epochs", "--validation-file", "--detach", "--watch", "--cancel", "NOMOAT_API_KEY",
                  "Ctrl+C"):
        assert shown in text
    assert "tune" in parser.format_help()


def test_against_the_real_server_a_job_is_started_detached_cancelled_and_watched_to_its_end(server, data, capsys,
                                                                                              monkeypatch):
    """The real Files and fine-tuning routes take what the command sends; cancelling stops the trainer at once."""
    for name in ("NOMOAT_HOST", "NOMOAT_API_KEY", "NOMOAT_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    real = ["--port", str(server.port)]
    assert main(["tune", MODEL, str(data), "--suffix", "zorbia", "--epochs", "1", "--detach", *real]) == 0
    out = capsys.readouterr().out
    job = out.split("started fine-tuning job ")[1].split(":")[0]
    assert job.startswith("ftjob-") and f"nomoat tune --watch {job}" in out
    assert main(["tune", "--cancel", job, *real]) == 0
    assert main(["tune", "--watch", job, *real]) == 1
    assert f"nomoat tune: job {job} cancelled" in capsys.readouterr().err
