"""What a job trains, checked before it is stored: its request's values against their bounds, its files (the
caller's, purpose fine-tune, in the chat format), and the TrainSpec its trainer gets, every "auto" resolved."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from ..engine.vocab_file import VocabFile
from ..errors import InvalidRequestError, NotFoundError
from ..files.fine_tune_format import check_fine_tune_file
from ..files.store import FileStore
from .jobs import Hyperparameters, Job, JobDir, LoraShape
from .spec import DEFAULT_TARGET_MODULES, TrainSpec, resolve_hyperparameters

# OpenAI's bounds for the hyperparameters it takes; LoRA's are nomoat's.
MAX_EPOCHS = 50
MAX_BATCH_SIZE = 256
MAX_LR_MULTIPLIER = 10.0
MAX_RANK = 256
MAX_ALPHA = 1024.0
MAX_METADATA_PAIRS = 16
# Tokens an example keeps (longer ones are cut at their end), at most the model's own context.
MAX_TOKENS = 2048
MICRO_BATCH = 4  # examples per forward pass (spec.py): memory does not grow with batch_size


@dataclass(frozen=True)
class TrainBase:
    """A served base model a job may train on: its name, its GGUF, its context and models.toml's template."""

    name: str
    path: Path
    n_ctx: int
    chat_template: str | None = None


def check_request(suffix: str | None, hyper: Hyperparameters, lora: LoraShape, suffix_pattern: re.Pattern[str],
                  metadata: dict[str, str] | None = None) -> None:
    """InvalidRequestError naming the field and its bound, for the first value out of bounds."""
    if suffix is not None and not suffix_pattern.fullmatch(suffix):
        raise InvalidRequestError("suffix must be 1 to 64 characters of a-z, A-Z, 0-9, '-' and '_'", param="suffix")
    _bound(hyper.n_epochs, 1, MAX_EPOCHS, "hyperparameters.n_epochs")
    _bound(hyper.batch_size, 1, MAX_BATCH_SIZE, "hyperparameters.batch_size")
    if hyper.learning_rate_multiplier != "auto" and not 0 < hyper.learning_rate_multiplier <= MAX_LR_MULTIPLIER:
        raise InvalidRequestError(f"hyperparameters.learning_rate_multiplier must be above 0 and at most "
                                  f"{MAX_LR_MULTIPLIER:g}", param="hyperparameters.learning_rate_multiplier")
    _bound(lora.rank, 1, MAX_RANK, "lora.rank")
    if lora.alpha != "auto" and not 0 < lora.alpha <= MAX_ALPHA:
        raise InvalidRequestError(f"lora.alpha must be above 0 and at most {MAX_ALPHA:g}", param="lora.alpha")
    if lora.target_modules != "auto":
        unknown = [m for m in lora.target_modules if m not in DEFAULT_TARGET_MODULES]
        if unknown or not lora.target_modules:
            raise InvalidRequestError(f"lora.target_modules must be a non-empty list of {', '.join(DEFAULT_TARGET_MODULES)}"
                                      f" (got {', '.join(unknown)[:200] or 'none'})", param="lora.target_modules")
    if metadata is not None and len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(f"metadata holds at most {MAX_METADATA_PAIRS} pairs", param="metadata")


def _bound(value: int | str, low: int, high: int, param: str) -> None:
    if value != "auto" and not (isinstance(value, int) and low <= value <= high):
        raise InvalidRequestError(f"{param} must be \"auto\" or an integer from {low} to {high}", param=param)


class FineTuneFiles:
    """The Files API's store as the tuner reads it: a file's path once it is the caller's, for fine-tuning,
    and in the chat format; every failure a 400 naming the request's field."""

    def __init__(self, store: FileStore) -> None:
        self._store = store

    async def fine_tune_path(self, file_id: str, owner: str | None, param: str) -> Path:
        try:
            found = await self._store.get(file_id, owner)
        except NotFoundError:
            raise InvalidRequestError(f"{param} {file_id[:64]!r}: no such file", param=param,
                                      code="invalid_file") from None
        if found.purpose != "fine-tune":
            raise InvalidRequestError(f"{param} {file_id!r} was uploaded with purpose {found.purpose!r}; "
                                      "fine-tuning takes a file of purpose 'fine-tune'", param=param,
                                      code="invalid_file")
        path = await self._store.path(file_id, owner)
        await asyncio.to_thread(check_fine_tune_file, path, param)
        return path


@dataclass(frozen=True)
class Planned:
    spec: TrainSpec
    longest: int  # the longest example's tokens, bounded by its bytes: the activations' size


def plan(job: Job, base: TrainBase, training: Path, validation: Path | None, where: JobDir, threads: int) -> Planned:
    """The job's TrainSpec (blocking: reads the training file and the GGUF's template)."""
    lines = [line for line in training.read_bytes().splitlines() if line.strip()]
    hyper = resolve_hyperparameters(len(lines), n_epochs=job.hyperparameters.n_epochs,
                                    batch_size=job.hyperparameters.batch_size,
                                    learning_rate_multiplier=job.hyperparameters.learning_rate_multiplier)
    with VocabFile(base.path, chat_template=base.chat_template) as vocab:
        template = vocab.template_source
    lora = job.lora
    max_tokens = min(MAX_TOKENS, base.n_ctx)
    spec = TrainSpec(base_gguf=base.path, chat_template=template, training_file=training, validation_file=validation,
                     job_dir=where.path, n_epochs=hyper.n_epochs, batch_size=hyper.batch_size,
                     micro_batch_size=min(MICRO_BATCH, hyper.batch_size), learning_rate=hyper.learning_rate,
                     seed=job.seed, threads=threads, max_tokens=max_tokens, resume=job.resume_from is not None,
                     **({} if lora.rank == "auto" else {"rank": lora.rank}),
                     **({} if lora.alpha == "auto" else {"alpha": lora.alpha}),
                     **({} if lora.target_modules == "auto" else {"target_modules": tuple(lora.target_modules)}))
    # A token is at least a byte of the JSON line; the template adds its markers (a few dozen tokens).
    longest = min(max_tokens, max((len(line) for line in lines), default=0) + 64)
    return Planned(spec, longest)
