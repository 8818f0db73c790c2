"""The trainer child's contract: the job it is given (`TrainSpec`, spec.json) and the events it prints back.

The parent writes `<job_dir>/spec.json` and runs `python -m nomoat.tuning.train <job_dir>/spec.json`. The child
prints one JSON object per line on stdout, in this order (its log goes to stderr):

    {"type":"validated","examples":N,"tokens":T,"total_steps":S}        the files rendered and tokenized
    {"type":"step","step":n,"total_steps":S,"epoch":e,"train_loss":x,   after each optimizer step; valid_* are
     "train_mean_token_accuracy":a,"valid_loss":y|null,                   null except at a checkpoint when a
     "valid_mean_token_accuracy":b|null,"tokens":T}                       validation file was given
    {"type":"checkpoint","step":n,"path":"<job_dir>/checkpoints/step-n"} a PEFT folder (adapter_config.json +
                                                                          adapter_model.safetensors)
    {"type":"paused","step":n}                                           after SIGTERM: a checkpoint and the
                                                                          resume state saved, exit status 0
    {"type":"done","step":n,"trained_tokens":T,"adapter":"<job_dir>/adapter"}
    {"type":"error","code":...,"message":...,"param":...|null}           then a nonzero exit status

`code` is one of ERROR_CODES: invalid_training_file / invalid_validation_file (bad before any training),
out_of_memory, training_failed, and training_unavailable (torch, transformers or peft missing; exit status 2).
Steps and epochs count from 1. A line that is not an event (a library printing on stdout) reads as None from `parse_event`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The LoRA rate every trainer reaches for first (the QLoRA paper's and peft's examples' 2e-4 for models up to
# ~13B): about ten times a full fine-tune's, as only the small A/B matrices move. OpenAI's multiplier scales it.
BASE_LEARNING_RATE = 2e-4
# All seven projections: the PEFT intake converts exactly these (server/adapters/peft.py), and adapting the MLP
# as well as attention learns facts markedly faster than q/v alone.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

ErrorCode = Literal["invalid_training_file", "invalid_validation_file", "out_of_memory", "training_failed",
                    "training_unavailable"]
ERROR_CODES: tuple[ErrorCode, ...] = ("invalid_training_file", "invalid_validation_file", "out_of_memory",
                                      "training_failed", "training_unavailable")
# The exit status of a child that cannot train here at all (torch, transformers or peft not installed).
EXIT_UNAVAILABLE = 2
SPEC_NAME = "spec.json"


class TrainSpec(BaseModel):
    """One training run, resolved: every "auto" already a number (see `resolve_hyperparameters`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_gguf: Path = Field(description="The very GGUF the server serves; transformers dequantises it to fp32.")
    chat_template: str = Field(description="The template text the server renders with (resolve_chat_template).")
    training_file: Path
    validation_file: Path | None = None
    job_dir: Path
    n_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="Examples per optimizer step.")
    micro_batch_size: int = Field(4, ge=1, description="Examples per forward pass: a batch is accumulated from "
                                                       "these, so memory does not grow with batch_size.")
    learning_rate: float = Field(gt=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Linear warmup over this part of the steps, "
                                                                "then a linear decay to 0.")
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0, description="LoRA's alpha: the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    seed: int = 0
    threads: int = Field(2, ge=1)
    max_tokens: int = Field(2048, ge=8, description="An example longer than this is cut at its end (as "
                                                    "OpenAI truncates); set it to the model's n_ctx.")
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints (0: only at each epoch's end).")
    keep_checkpoints: int = Field(3, ge=1)
    resume: bool = False

    @property
    def checkpoints_dir(self) -> Path:
        return self.job_dir / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.job_dir / "adapter"

    def write(self) -> Path:
        """spec.json in the job dir, for the child."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        path = self.job_dir / SPEC_NAME
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> TrainSpec:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


# --- "auto" hyperparameters ----------------------------------------------------------------------------------

# OpenAI's rules for "auto" (its cookbook's "Data preparation and analysis for chat model fine-tuning", and the
# fine-tunes guide): 3 epochs, raised so that a small file is seen ~100 times in all (at most 25 epochs) and
# lowered so that a large one is seen at most 25,000 times; a batch of ~0.2 % of the examples, capped at 256.
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_DEFAULT_EPOCHS = 25
MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    @property
    def learning_rate(self) -> float:
        return BASE_LEARNING_RATE * self.learning_rate_multiplier


def auto_epochs(n_examples: int) -> int:
    n = max(n_examples, 1)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(MAX_AUTO_BATCH, round(n_examples * 0.002)))


def resolve_hyperparameters(n_examples: int, *, n_epochs: int | Literal["auto"] = "auto",
                            batch_size: int | Literal["auto"] = "auto",
                            learning_rate_multiplier: float | Literal["auto"] = "auto") -> Hyperparameters:
    """A job's hyperparameters with each "auto" filled from the training file's example count. The multiplier's
    auto is 1 (BASE_LEARNING_RATE as it is): OpenAI's auto of 0.05-0.2 multiplies its own, undisclosed base."""
    return Hyperparameters(
        n_epochs=auto_epochs(n_examples) if n_epochs == "auto" else n_epochs,
        batch_size=auto_batch_size(n_examples) if batch_size == "auto" else batch_size,
        learning_rate_multiplier=1.0 if learning_rate_multiplier == "auto" else learning_rate_multiplier,
    )


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: the last batch may be short, none is dropped."""
    return max(1, -(-n_examples // batch_size))


# --- events, child -> parent ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Validated:
    examples: int
    tokens: int
    total_steps: int
    type: Literal["validated"] = "validated"


@dataclass(frozen=True)
class Step:
    step: int
    total_steps: int
    epoch: int
    train_loss: float
    train_mean_token_accuracy: float
    tokens: int
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    type: Literal["step"] = "step"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str
    type: Literal["checkpoint"] = "checkpoint"


@dataclass(frozen=True)
class Paused:
    step: int
    type: Literal["paused"] = "paused"


@dataclass(frozen=True)
class Done:
    step: int
    trained_tokens: int
    adapter: str
    type: Literal["done"] = "done"


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    message: str
    param: str | None = None
    type: Literal["error"] = "error"


Event = Validated | Step | Checkpoint | Paused | Done | Error
_EVENT_TYPES: dict[str, type[Event]] = {"validated": Validated, "step": Step, "checkpoint": Checkpoint,
                                        "paused": Paused, "done": Done, "error": Error}


def event_line(event: Event) -> str:
    """The event as the child prints it: one line of JSON, no newline."""
    return json.dumps(asdict(event), separators=(",", ":"))


def parse_event(line: str) -> Event | None:
    """The event a line of the child's stdout carries, or None when the line is not one of ours."""
    try:
        data: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = _EVENT_TYPES.get(str(data.get("type")))
    if kind is None:
        return None
    try:
        event = kind(**data)
    except TypeError:
        return None
    if isinstance(event, Error) and event.code not in ERROR_CODES:
        return Error(code="training_failed", message=event.message, param=event.param)
    return event
