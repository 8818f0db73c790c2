"""A fine-tuning job's record: its fields as OpenAI's `fine_tuning.job`, its status and transitions, and its
directory under the state dir (job.json written atomically, events.jsonl and checkpoints.jsonl appended).

The Job alone changes its own fields (its transition methods); the Tuner (tuner.py) decides when to call them.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from ..errors import InvalidRequestError

Auto = Literal["auto"]
Level = Literal["info", "warn", "error"]


class Status(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


def new_id(prefix: str) -> str:
    """OpenAI's id shape: a prefix and 24 characters."""
    return prefix + secrets.token_hex(12)


@dataclass
class Hyperparameters:
    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"


@dataclass
class LoraShape:
    """nomoat's extension: the LoRA the job trains ("auto": the trainer's own choice)."""

    rank: int | Auto = "auto"
    alpha: float | Auto = "auto"
    target_modules: list[str] | Auto = "auto"


@dataclass
class Job:
    """One fine-tuning job. `owner` is the key id that created it (None with auth off); `base` the served model
    name the trainer loads (`model` is the id the request gave, an alias maybe)."""

    id: str
    created_at: int
    model: str
    base: str
    training_file: str
    validation_file: str | None
    hyperparameters: Hyperparameters
    lora: LoraShape
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    owner: str | None = None
    status: Status = Status.VALIDATING_FILES
    error: dict[str, str | None] | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    result_files: list[str] = field(default_factory=list)
    resume_from: str | None = None  # the last checkpoint's folder: a resumed or restarted job goes on from there
    step: int = 0  # the last step reported
    total_steps: int | None = None

    # --- transitions ---------------------------------------------------------------------

    def validated(self) -> None:
        assert self.status is Status.VALIDATING_FILES
        self.status = Status.QUEUED

    def started(self) -> None:
        assert self.status is Status.QUEUED
        self.status = Status.RUNNING

    def pause(self) -> None:
        if self.status is not Status.RUNNING:
            raise InvalidRequestError(f"job {self.id} is {self.status}: only a running job can be paused",
                                      param="fine_tuning_job_id")
        self.status = Status.PAUSED

    def resume(self) -> None:
        if self.status is not Status.PAUSED:
            raise InvalidRequestError(f"job {self.id} is {self.status}: only a paused job can be resumed",
                                      param="fine_tuning_job_id")
        self.status = Status.QUEUED

    def requeued(self) -> None:
        """At startup: a job running or queued at shutdown waits its turn again (from its last checkpoint)."""
        self.status = Status.QUEUED
        self.estimated_finish = None

    def cancel(self, now: int) -> None:
        if self.status in FINISHED:
            raise InvalidRequestError(f"job {self.id} has already {self.status}: it cannot be cancelled",
                                      param="fine_tuning_job_id")
        self.status, self.finished_at, self.estimated_finish = Status.CANCELLED, now, None

    def fail(self, code: str, message: str, now: int, param: str | None = None) -> None:
        self.status, self.finished_at, self.estimated_finish = Status.FAILED, now, None
        self.error = {"code": code, "message": message, "param": param}

    def succeed(self, model_id: str, trained_tokens: int | None, now: int) -> None:
        self.status, self.finished_at, self.estimated_finish = Status.SUCCEEDED, now, None
        self.fine_tuned_model, self.trained_tokens = model_id, trained_tokens

    def progressed(self, step: int, total_steps: int | None, started_at: float, now: float) -> None:
        """A step reported: the estimate of the finish follows the steps' pace so far."""
        self.step, self.total_steps = step, total_steps or self.total_steps
        if self.total_steps and step > 0:
            self.estimated_finish = int(now + (now - started_at) / step * max(0, self.total_steps - step))

    def checkpointed(self, path: Path) -> None:
        self.resume_from = str(path)

    # --- names ---------------------------------------------------------------------------

    def model_id(self, step: int | None = None) -> str:
        """OpenAI's form, `ft:<base>:<suffix>:<job-id>` (the suffix empty when none), `:ckpt-step-N` for a checkpoint."""
        name = f"ft:{self.model}:{self.suffix or ''}:{self.id}"
        return name if step is None else f"{name}:ckpt-step-{step}"

    # --- wire and disk -------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        hyper = asdict(self.hyperparameters)
        return {
            "object": "fine_tuning.job", "id": self.id, "created_at": self.created_at, "model": self.model,
            "status": str(self.status), "error": self.error, "fine_tuned_model": self.fine_tuned_model,
            "finished_at": self.finished_at, "hyperparameters": hyper,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
            "organization_id": "org-nomoat", "result_files": self.result_files, "seed": self.seed,
            "trained_tokens": self.trained_tokens, "training_file": self.training_file,
            "validation_file": self.validation_file, "estimated_finish": self.estimated_finish,
            "integrations": [], "metadata": self.metadata, "suffix": self.suffix,
            "lora": asdict(self.lora),  # nomoat's extension
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        data = dict(data)
        data["hyperparameters"] = Hyperparameters(**data["hyperparameters"])
        data["lora"] = LoraShape(**data["lora"])
        data["status"] = Status(data["status"])
        return cls(**data)


class JobDir:
    """`<state_dir>/fine_tuning/<job-id>/`: job.json, events.jsonl, checkpoints.jsonl, spec.json, train.log and
    checkpoints/ (the trainer's PEFT folders). Written from the event loop's thread only (small writes)."""

    def __init__(self, root: Path, job_id: str) -> None:
        self.path = root / job_id

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    def save(self, job: Job) -> None:
        """job.json replaced atomically: a crash leaves the old record or the new one, never half of one."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "job.json.tmp"
        tmp.write_text(json.dumps(job.to_json()), encoding="utf-8")
        os.replace(tmp, self.path / "job.json")

    def load(self) -> Job:
        return Job.from_json(json.loads((self.path / "job.json").read_text(encoding="utf-8")))

    def add_event(self, message: str, level: Level = "info", data: dict[str, Any] | None = None) -> dict[str, Any]:
        kind = "metrics" if data is not None and "step" in data else "message"
        event = {"object": "fine_tuning.job.event", "id": new_id("ftevent-"), "created_at": int(time.time()),
                 "level": level, "message": message, "data": data or {}, "type": kind}
        self._append("events.jsonl", event)
        return event

    def add_checkpoint(self, job: Job, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        checkpoint = {"object": "fine_tuning.job.checkpoint", "id": new_id("ftckpt_"), "created_at": int(time.time()),
                      "fine_tuned_model_checkpoint": job.model_id(step), "step_number": step, "metrics": metrics,
                      "fine_tuning_job_id": job.id}
        self._append("checkpoints.jsonl", checkpoint)
        return checkpoint

    def events(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return self._read("events.jsonl")

    def checkpoints(self) -> list[dict[str, Any]]:
        return self._read("checkpoints.jsonl")

    def _append(self, name: str, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / name, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    def _read(self, name: str) -> list[dict[str, Any]]:
        try:
            text = (self.path / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # A line cut by a crash mid-write is the last one: it is skipped.
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, starting after the item whose id is `after` (as OpenAI's cursor pages): items and has_more."""
    newest = list(reversed(items))
    if after is not None:
        ids = [item["id"] for item in newest]
        newest = newest[ids.index(after) + 1:] if after in ids else []
    return newest[:limit], len(newest) > limit
