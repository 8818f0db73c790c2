"""`nomoat tune`: a fine-tuning job started through the running server (POST /v1/files, POST /v1/fine_tuning/jobs,
OpenAI's shapes) and its progress shown, a line per training step, until it ends."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from . import config
from .client import ServerClient, ServerRefused
from .errors import ConfigError

# A job's statuses after which nothing changes (OpenAI's).
FINISHED = ("succeeded", "failed", "cancelled")
# How often a running job is asked about: a training step on a CPU takes about a second or more.
POLL_SECONDS = 1.0
# Events asked for per page; a job that logged more since the last look is paged through with `after`.
EVENTS_PAGE = 100
# An upload may be large and the server's disk slow: the whole request's limit.
UPLOAD_SECONDS = 600.0
# The exit status of a command the user interrupted (128 + SIGINT), as shells report it.
INTERRUPTED = 130


@dataclass(frozen=True)
class TuneOptions:
    """The job's settings from the command line; None leaves a hyperparameter to the server ("auto")."""

    suffix: str | None = None
    epochs: int | None = None
    validation_file: str | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    detach: bool = False

    def hyperparameters(self) -> dict[str, Any]:
        given = {"n_epochs": self.epochs, "batch_size": self.batch_size,
                 "learning_rate_multiplier": self.learning_rate_multiplier}
        return {name: value for name, value in given.items() if value is not None}


def tune(cli: dict[str, Any], model: str, file: str, options: TuneOptions) -> int:
    """0 once the job succeeds (or is started, with --detach); 1 where it fails or the server refuses; 2 for bad
    settings or an unreadable file; 130 on Ctrl+C, which leaves the job running."""
    tuner = _tuner(cli)
    if tuner is None:
        return 2
    return tuner.start(model, file, options)


def watch(cli: dict[str, Any], job_id: str) -> int:
    """`nomoat tune --watch JOB`: a started job's progress until it ends (exit codes as tune's)."""
    tuner = _tuner(cli)
    return 2 if tuner is None else tuner.guarded(lambda: tuner.watch(job_id), job_id)


def cancel(cli: dict[str, Any], job_id: str) -> int:
    """`nomoat tune --cancel JOB`: 0 once the server has the cancel, 1 where it refuses (no such job, finished)."""
    tuner = _tuner(cli)
    return 2 if tuner is None else tuner.guarded(lambda: tuner.cancel(job_id), job_id)


def _tuner(cli: dict[str, Any]) -> Tuner | None:
    try:
        settings = config.load_settings(cli)[0]
    except ConfigError as exc:
        print(f"nomoat: configuration error:\n{exc}", file=sys.stderr)
        return None
    client = ServerClient(settings)
    if settings.api_key is not None:  # a job is the key's that made it: the API key's, as the page's and the SDK's
        client.key = settings.api_key.get_secret_value().split(",")[0].strip()
    return Tuner(client, sys.stdout, sys.stderr)


class Tuner:
    """One command's conversation with the server: uploads, the job, and its events as they come."""

    def __init__(self, client: ServerClient, out: TextIO, err: TextIO,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client, self.out, self.err, self.sleep = client, out, err, sleep
        self.seen: set[str] = set()  # event ids already shown

    def start(self, model: str, file: str, options: TuneOptions) -> int:
        try:
            training = self.upload(Path(file))
            validation = self.upload(Path(options.validation_file)) if options.validation_file else None
        except OSError as exc:
            print(f"nomoat tune: cannot read {exc.filename}: {exc.strerror or exc}", file=self.err)
            return 2
        except ServerRefused as exc:
            return self.refused(exc)
        except KeyboardInterrupt:
            print("\nnomoat tune: interrupted before any job was started", file=self.err)
            return INTERRUPTED
        body: dict[str, Any] = {"model": model, "training_file": training}
        if validation is not None:
            body["validation_file"] = validation
        if options.suffix is not None:
            body["suffix"] = options.suffix
        if options.hyperparameters():
            body["method"] = {"type": "supervised", "supervised": {"hyperparameters": options.hyperparameters()}}
        try:
            job = self.request("POST", "/v1/fine_tuning/jobs", body)
        except ServerRefused as exc:
            return self.refused(exc)
        job_id = str(job["id"])
        self.say(f"started fine-tuning job {job_id}: {model} on {file}")
        if options.detach:
            self.say(self.how_to_follow(job_id))
            return 0
        return self.guarded(lambda: self.watch(job_id), job_id)

    def guarded(self, action: Callable[[], int], job_id: str) -> int:
        """`action`, with the server's refusals as exit 1 and Ctrl+C as a detach that leaves the job alone."""
        try:
            return action()
        except ServerRefused as exc:
            return self.refused(exc)
        except KeyboardInterrupt:
            print(f"\nnomoat tune: stopped watching; job {job_id} goes on.\n{self.how_to_follow(job_id)}", file=self.err)
            return INTERRUPTED

    def upload(self, path: Path) -> str:
        """The file id of `path` uploaded with purpose fine-tune (multipart, as the openai SDK sends it)."""
        content = path.read_bytes()
        boundary = "nomoat-" + secrets.token_hex(16)
        name = quote(path.name, safe=" .-_()[]")  # no quote or newline can end the header early
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        data = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
        with self.client.send("POST", "/v1/files", data, f"multipart/form-data; boundary={boundary}",
                              UPLOAD_SECONDS) as answer:
            uploaded = json.loads(answer.read())
        self.say(f"uploaded {path.name} as {uploaded['id']} ({len(content):,} bytes)")
        return str(uploaded["id"])

    def watch(self, job_id: str) -> int:
        """Each new event and status change, until the job ends: 0 where it succeeded, else 1 with its error."""
        status = None
        while True:
            job = self.request("GET", f"/v1/fine_tuning/jobs/{job_id}")
            for event in self.new_events(job_id):
                self.show(event)
            if job["status"] != status:
                status = job["status"]
                self.say(f"status: {status}")
            if status in FINISHED:
                return self.ended(job)
            self.sleep(POLL_SECONDS)

    def cancel(self, job_id: str) -> int:
        job = self.request("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
        self.say(f"job {job_id}: {job['status']}")
        return 0

    def new_events(self, job_id: str) -> list[dict[str, Any]]:
        """The events not shown yet, oldest first. The server lists the newest first; `after` pages back."""
        fresh: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self.request("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit={EVENTS_PAGE}{after}")
            data = page.get("data") or []
            for event in data:
                if event["id"] in self.seen:
                    break
                fresh.append(event)
            else:
                if data and page.get("has_more"):
                    after = f"&after={quote(str(data[-1]['id']))}"
                    continue
            break
        self.seen.update(event["id"] for event in fresh)
        return fresh[::-1]

    def show(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("type") == "metrics" and isinstance(data, dict):
            self.say(metrics_line(data))
        elif event.get("level") in ("warn", "error"):
            self.say(f"{event['level']}: {event.get('message', '')}")

    def ended(self, job: dict[str, Any]) -> int:
        if job["status"] == "succeeded":
            model = job.get("fine_tuned_model")
            tokens = job.get("trained_tokens")
            self.say(f"fine-tuned model: {model}" + (f" ({tokens:,} tokens trained)" if isinstance(tokens, int) else ""))
            self.say(f"chat with it: nomoat run {model}")
            return 0
        error = job.get("error") or {}
        why = error.get("message") if isinstance(error, dict) else None
        code = f" ({error['code']})" if isinstance(error, dict) and error.get("code") else ""
        print(f"nomoat tune: job {job['id']} {job['status']}" + (f": {why}{code}" if why else ""), file=self.err)
        return 1

    def how_to_follow(self, job_id: str) -> str:
        return f"  watch it:  nomoat tune --watch {job_id}\n  cancel it: nomoat tune --cancel {job_id}"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.client.open(method, path, body) as answer:
            found: dict[str, Any] = json.loads(answer.read())
        return found

    def refused(self, exc: ServerRefused) -> int:
        print(f"nomoat tune: {exc.message}", file=self.err)
        return 1

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def metrics_line(data: dict[str, Any]) -> str:
    """One training step's line: step/total, train loss, and validation loss and token accuracy where reported."""
    total = data.get("total_steps")
    parts = [f"step {data.get('step', '?')}" + (f"/{total}" if total is not None else "")]
    for key, label in (("train_loss", "train loss"), ("valid_loss", "valid loss"),
                       ("train_mean_token_accuracy", "accuracy")):
        value = data.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.4f}")
    return "  ".join(parts)
