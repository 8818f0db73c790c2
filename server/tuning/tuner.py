"""The one owner of fine-tuning jobs: creates them (every check before any training), runs them one at a time in
a trainer child (max_training_jobs) inside the memory budget, and serves each result as an adapter, `ft:` named.

Restarts: a job running or queued at shutdown is queued again when the server comes back and goes on from its
last checkpoint (the trainer resumes from it; with none yet, from the start), as a paused job resumes; `aclose()`
pauses a running child (SIGTERM: it checkpoints) so the next start loses at most the step under way. Succeeded
jobs' adapters, and their kept checkpoints, are registered again at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..adapters.catalogue import AdapterCatalogue
from ..errors import InvalidRequestError, ModelTooLargeError, NomoatError, NotFoundError
from ..residency.reservation import MemoryReservations, Reservation
from . import footprint
from .jobs import FINISHED, Hyperparameters, Job, JobDir, LoraShape, Status, new_id, page
from .plan import Planned, TrainBase, check_request, plan
from .runner import PAUSE_WAIT_SECONDS, TrainerProcess, trainer_command
from .spec import Checkpoint, Done, Error, Event, Paused, Step, Validated
from .train import training_available

log = logging.getLogger(__name__)

SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Bases(Protocol):
    """What the tuner needs of the model registry: the served base model a request's `model` names."""

    def trainable(self, model_id: str) -> TrainBase: ...  # InvalidRequestError (param "model") when it is not one


class TrainingFiles(Protocol):
    """What the tuner needs of the Files API's store: a fine-tune file's path, checked, for its owner."""

    async def fine_tune_path(self, file_id: str, owner: str | None, param: str) -> Path: ...


@dataclass(frozen=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    lora: LoraShape = field(default_factory=LoraShape)


@dataclass(frozen=True)
class TunerSettings:
    root: Path  # <state_dir>/fine_tuning
    train_threads: int = 1
    max_training_jobs: int = 1
    train_idle_priority: bool = True  # SCHED_IDLE (else nice 19) for the trainers: runner.py says why


Command = Callable[[Path], Sequence[str]]  # the trainer's command for a spec.json (tests give a fake trainer)


class Tuner:
    def __init__(self, settings: TunerSettings, bases: Bases, files: TrainingFiles, catalogue: AdapterCatalogue,
                 memory: MemoryReservations | None, *, command: Command = trainer_command,
                 available: Callable[[], str | None] | None = None) -> None:
        self._settings = settings
        self._bases = bases
        self._files = files
        self._catalogue = catalogue
        self._memory = memory
        self._command = command
        self._available = available or training_available
        self._jobs: dict[str, Job] = {}  # in creation order
        self._tasks: dict[str, asyncio.Task[None]] = {}  # a job waiting for memory or training
        self._children: dict[str, TrainerProcess] = {}
        self._outcomes: dict[str, Done | Error] = {}
        self._closing = False

    def _dir(self, job: Job) -> JobDir:
        return JobDir(self._settings.root, job.id)

    # --- requests ----------------------------------------------------------------------

    async def create(self, owner: str | None, request: JobRequest) -> Job:
        """A new job, queued; every 400 is raised before anything is stored or trained."""
        check_request(request.suffix, request.hyperparameters, request.lora, SUFFIX, request.metadata)
        missing = self._available()
        if missing is not None:
            raise InvalidRequestError(missing, param="model", code="training_unavailable")
        base = self._bases.trainable(request.model)
        training = await self._files.fine_tune_path(request.training_file, owner, "training_file")
        if request.validation_file is not None:
            await self._files.fine_tune_path(request.validation_file, owner, "validation_file")
        job = Job(id=new_id("ftjob-"), created_at=int(time.time()), model=request.model, base=base.name,
                  training_file=request.training_file, validation_file=request.validation_file,
                  hyperparameters=request.hyperparameters, lora=request.lora,
                  seed=request.seed if request.seed is not None else int(time.time()) % 2**31,
                  suffix=request.suffix, metadata=request.metadata, owner=owner)
        where = self._dir(job)
        where.add_event(f"Created fine-tuning job: {job.id}")
        where.add_event(f"Validated training file: {job.training_file} ({training.stat().st_size} bytes)")
        job.validated()
        where.save(job)
        self._jobs[job.id] = job
        self._schedule()
        return job

    def get(self, owner: str | None, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:  # another key's job does not exist for this one
            raise NotFoundError(f"fine-tuning job {job_id!r} does not exist", param="fine_tuning_job_id")
        return job

    def list_jobs(self, owner: str | None, after: str | None, limit: int,
             metadata: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], bool]:
        mine = [j.to_wire() for j in self._jobs.values() if j.owner == owner
                and all((j.metadata or {}).get(k) == v for k, v in (metadata or {}).items())]
        return page(mine, after, limit)

    def events(self, owner: str | None, job_id: str, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        return page(self._dir(self.get(owner, job_id)).events(), after, limit)

    def checkpoints(self, owner: str | None, job_id: str, after: str | None,
                    limit: int) -> tuple[list[dict[str, Any]], bool]:
        job = self.get(owner, job_id)
        kept = [c for c in self._dir(job).checkpoints() if self._checkpoint_dir(job, c["step_number"]).is_dir()]
        return page(kept, after, limit)

    async def cancel(self, owner: str | None, job_id: str) -> Job:
        job = self.get(owner, job_id)
        training = job.status is Status.RUNNING  # its child runs, or starts and is killed at once (_train)
        job.cancel(int(time.time()))
        self._dir(job).add_event("Fine-tuning job cancelled")
        self._dir(job).save(job)
        child = self._children.get(job.id)
        if child is not None:
            await child.kill()  # its memory freed before the answer; the run's end releases the reservation
        task = self._tasks.get(job.id)
        if task is not None and not training:
            task.cancel()  # still waiting for memory
        with contextlib.suppress(asyncio.CancelledError):
            if task is not None:
                await task
        return job

    async def pause(self, owner: str | None, job_id: str) -> Job:
        job = self.get(owner, job_id)
        job.pause()
        self._dir(job).save(job)
        child = self._children.get(job.id)
        if child is not None:
            child.pause()  # it saves a checkpoint and exits; its run then releases the memory
        return job

    async def resume(self, owner: str | None, job_id: str) -> Job:
        job = self.get(owner, job_id)
        job.resume()
        self._dir(job).add_event(f"Fine-tuning job resumed from step {job.step}")
        self._dir(job).save(job)
        self._schedule()
        return job

    async def delete_model(self, owner: str | None, model_id: str, admin: bool) -> bool:
        """DELETE /v1/models/{id} of an `ft:` model: its adapter unloaded and its files removed, its job's record
        kept (fine_tuned_model still names it, as OpenAI's does). False when no job made `model_id`."""
        for job in self._jobs.values():
            folder = self._served_dir(job, model_id)
            if folder is None:
                continue
            if not admin and job.owner != owner:
                return False
            if self._catalogue.get(model_id) is not None:
                await self._catalogue.unload(model_id)
            await asyncio.to_thread(shutil.rmtree, folder, True)
            self._dir(job).add_event(f"Model {model_id} deleted")
            return True
        return False

    def _served_dir(self, job: Job, model_id: str) -> Path | None:
        if job.fine_tuned_model is not None and model_id == job.fine_tuned_model:
            return self._dir(job).adapter_dir
        prefix = job.model_id() + ":ckpt-step-"
        if model_id.startswith(prefix) and model_id[len(prefix):].isdigit():
            return self._checkpoint_dir(job, int(model_id[len(prefix):]))
        return None

    def _checkpoint_dir(self, job: Job, step: int) -> Path:
        return self._dir(job).checkpoints_dir / f"step-{step}"

    # --- scheduling ----------------------------------------------------------------------

    def _schedule(self) -> None:
        """Start queued jobs, oldest first, while fewer than max_training_jobs wait for memory or train."""
        if self._closing:
            return
        for job in self._jobs.values():
            if len(self._tasks) >= self._settings.max_training_jobs:
                return
            if job.status is Status.QUEUED and job.id not in self._tasks:
                self._tasks[job.id] = asyncio.ensure_future(self._run(job))

    async def _run(self, job: Job) -> None:
        where = self._dir(job)
        try:
            planned = await self._plan(job, where)
            reservation = await self._reserve(job, planned)
            if reservation is None:
                return
            try:
                await self._train(job, where, planned)
            finally:
                reservation.release()
        except NomoatError as exc:  # its files went away meanwhile, say
            if job.status not in FINISHED:
                job.fail(exc.code or "training_failed", exc.message, int(time.time()), exc.param)
                where.add_event(f"Fine-tuning job failed: {exc.message}", "error")
                where.save(job)
        except Exception as exc:
            log.exception("fine-tuning job %s failed", job.id)
            if job.status not in FINISHED:
                job.fail("training_failed", f"{type(exc).__name__}: {exc}", int(time.time()))
                where.save(job)
        finally:
            self._tasks.pop(job.id, None)
            self._schedule()

    async def _plan(self, job: Job, where: JobDir) -> Planned:
        base = self._bases.trainable(job.base)
        training = await self._files.fine_tune_path(job.training_file, job.owner, "training_file")
        validation = None if job.validation_file is None else \
            await self._files.fine_tune_path(job.validation_file, job.owner, "validation_file")
        return await asyncio.to_thread(plan, job, base, training, validation, where, self._settings.train_threads)

    async def _reserve(self, job: Job, planned: Planned) -> Reservation | None:
        """Memory for the job's trainer; None (the job failed, saying why) when it can never fit."""
        if self._memory is None:
            return Reservation(job.id, 0, None)
        spec = planned.spec
        need = await asyncio.to_thread(footprint.estimate, spec.base_gguf, spec.rank, spec.micro_batch_size,
                                       planned.longest)
        name = f"fine-tuning job {job.id}"
        log.info("fine-tuning job %s: trainer estimated at %s", job.id, need)
        try:
            return await self._memory.reserve(name, need.total())
        except ModelTooLargeError as exc:
            job.fail("out_of_memory", exc.message, int(time.time()))
            self._dir(job).add_event(exc.message, "error")
            self._dir(job).save(job)
            return None

    async def _train(self, job: Job, where: JobDir, planned: Planned) -> None:
        path = planned.spec.write()
        job.started()
        where.add_event("Fine-tuning job started" if job.step == 0 else f"Fine-tuning job resumed at step {job.step}")
        where.save(job)
        started = time.time()
        child = TrainerProcess(self._command(path), where.log, self._settings.train_threads,
                               lambda event: self._on_event(job, where, event, started),
                               idle=self._settings.train_idle_priority)
        await child.start()
        self._children[job.id] = child
        try:
            if job.status is Status.PAUSED:  # paused or cancelled while its child started
                child.pause()
            elif job.status is Status.CANCELLED:
                await child.kill()
            status = await child.wait()
        finally:
            self._children.pop(job.id, None)
        outcome = self._outcomes.pop(job.id, None)
        if job.status is not Status.RUNNING or self._closing:
            return  # paused or cancelled (already said), or paused by the shutdown: the next start resumes it
        if isinstance(outcome, Done):
            await self._succeed(job, where, outcome)
        elif isinstance(outcome, Error):
            job.fail(outcome.code, outcome.message, int(time.time()), outcome.param)
        else:
            tail = child.log_tail()
            job.fail("training_failed", f"the trainer exited with status {status}" + (f": {tail}" if tail else ""),
                     int(time.time()))
        if job.error is not None:
            where.add_event(f"Fine-tuning job failed: {job.error['message']}", "error")
        where.save(job)

    def _on_event(self, job: Job, where: JobDir, event: Event, started: float) -> None:
        if isinstance(event, Validated):
            job.total_steps = event.total_steps
            where.add_event(f"Training file validated: {event.examples} examples, {event.tokens} tokens, "
                            f"{event.total_steps} steps")
        elif isinstance(event, Step):
            job.progressed(event.step, event.total_steps, started, time.time())
            data = {"step": event.step, "train_loss": event.train_loss, "valid_loss": event.valid_loss,
                    "train_mean_token_accuracy": event.train_mean_token_accuracy,
                    "valid_mean_token_accuracy": event.valid_mean_token_accuracy, "total_steps": event.total_steps}
            where.add_event(f"Step {event.step}/{event.total_steps}: training loss={event.train_loss:.4f}", data=data)
        elif isinstance(event, Checkpoint):
            job.checkpointed(Path(event.path))
            where.add_checkpoint(job, event.step, self._last_metrics(where))
        elif isinstance(event, Paused):
            where.add_event(f"Fine-tuning job paused at step {event.step}")
        else:
            self._outcomes[job.id] = event
        where.save(job)

    @staticmethod
    def _last_metrics(where: JobDir) -> dict[str, Any]:
        metrics = [e["data"] for e in where.events() if e["type"] == "metrics"]
        return {k: v for k, v in metrics[-1].items() if k != "total_steps"} if metrics else {}

    async def _succeed(self, job: Job, where: JobDir, done: Done) -> None:
        try:
            await self._register(job, Path(done.adapter), job.model_id())
        except NomoatError as exc:
            job.fail("training_failed", f"the trained adapter could not be served: {exc.message}", int(time.time()))
            return
        # Its checkpoints serve before the job says succeeded: a client that sees "succeeded" finds every model.
        await self._register_checkpoints(job)
        job.succeed(job.model_id(), done.trained_tokens, int(time.time()))
        where.add_event(f"New fine-tuned model created: {job.fine_tuned_model}")
        where.add_event("The job has successfully completed")

    async def _register(self, job: Job, folder: Path, name: str) -> None:
        await self._catalogue.load(name, folder, job.base, 1.0, origin="tune")

    async def _register_checkpoints(self, job: Job) -> None:
        for record in self._dir(job).checkpoints():
            folder = self._checkpoint_dir(job, record["step_number"])
            if folder.is_dir() and self._catalogue.get(record["fine_tuned_model_checkpoint"]) is None:
                try:
                    await self._register(job, folder, record["fine_tuned_model_checkpoint"])
                except NomoatError as exc:
                    log.warning("checkpoint %s of %s is not served: %s", record["step_number"], job.id, exc.message)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read every job back; serve the succeeded ones' adapters; queue again the ones cut by the last shutdown."""
        root = self._settings.root
        found = sorted(root.glob("*/job.json")) if root.is_dir() else []
        jobs = []
        for record in found:
            try:
                jobs.append(JobDir(root, record.parent.name).load())
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("fine-tuning job record %s cannot be read: %s", record, exc)
        for job in sorted(jobs, key=lambda j: j.created_at):
            self._jobs[job.id] = job
            if job.status is Status.SUCCEEDED and job.fine_tuned_model is not None:
                if self._dir(job).adapter_dir.is_dir():
                    try:
                        await self._register(job, self._dir(job).adapter_dir, job.fine_tuned_model)
                    except NomoatError as exc:
                        log.error("fine-tuned model %s is not served: %s", job.fine_tuned_model, exc.message)
                await self._register_checkpoints(job)
            elif job.status in (Status.RUNNING, Status.QUEUED, Status.VALIDATING_FILES):
                job.requeued()
                self._dir(job).add_event(f"Server restarted: the job goes on from step {job.step}")
                self._dir(job).save(job)
        self._schedule()

    async def aclose(self) -> None:
        """Pause running children (SIGTERM, bounded, then SIGKILL) so the next start resumes them."""
        self._closing = True
        await asyncio.gather(*(child.stop(PAUSE_WAIT_SECONDS) for child in list(self._children.values())))
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

