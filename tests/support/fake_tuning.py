"""OpenAI's Files and fine-tuning routes faked in front of an app (or alone), for the CLI's and the page's tests of
`nomoat tune` and the fine-tuning view without a trainer: a job moves one step each time it is looked at."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

FAKED = ("/v1/files", "/v1/fine_tuning")


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}},
                        status_code=status)


@dataclass
class FakeJob:
    """One job's record and its events (oldest first); `steps` metrics events, then `outcome`."""

    id: str
    model: str
    body: dict[str, Any]
    steps: int
    outcome: str  # succeeded, failed, or "hold": it runs until cancelled
    status: str = "validating_files"
    step: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None

    def event(self, message: str, data: dict[str, Any] | None = None, level: str = "info") -> None:
        self.events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{self.id}-{len(self.events)}",
                            "created_at": int(time.time()), "level": level, "message": message,
                            "type": "metrics" if data else "message", "data": data or {}})

    def advance(self) -> None:
        """One look's worth of progress: validation passes, then a training step, then the end."""
        if self.status == "validating_files":
            self.status = "running"
            self.event("Fine-tuning job started")
        elif self.status == "running" and (self.step < self.steps or self.outcome == "hold"):
            self.step += 1
            total = max(self.steps, self.step)
            self.event(f"Step {self.step}/{total}", {"step": self.step, "total_steps": total,
                                                      "train_loss": 3.0 / self.step, "valid_loss": 3.2 / self.step,
                                                      "train_mean_token_accuracy": 1 - 1 / (self.step + 1)})
        elif self.status == "running" and self.outcome == "failed":
            self.status, self.error = "failed", {"code": "training_diverged", "message": "the loss became NaN",
                                                 "param": None}
            self.event("the loss became NaN", level="error")
        elif self.status == "running":
            suffix = self.body.get("suffix") or ""
            self.status, self.fine_tuned_model = "succeeded", f"ft:{self.model}:{suffix}:{self.id}"
            self.event("The job has successfully completed")

    def card(self) -> dict[str, Any]:
        return {"object": "fine_tuning.job", "id": self.id, "model": self.model, "status": self.status,
                "created_at": 0, "finished_at": None, "fine_tuned_model": self.fine_tuned_model, "error": self.error,
                "training_file": self.body["training_file"], "validation_file": self.body.get("validation_file"),
                "trained_tokens": 1234 if self.status == "succeeded" else None, "hyperparameters": {},
                "method": self.body.get("method"), "result_files": [], "seed": 0, "organization_id": "nomoat"}


class FakeTuning:
    """The faked routes; every other path goes to `app` (the real page and API), or answers 404."""

    def __init__(self, app: ASGIApp | None = None, steps: int = 3, outcome: str = "succeeded") -> None:
        self.app, self.steps, self.outcome = app, steps, outcome
        self.url = ""  # where it is served, once it is
        self.uploads: dict[str, tuple[str, bytes]] = {}  # id → (purpose, content)
        self.jobs: dict[str, FakeJob] = {}
        self.keys: list[str | None] = []  # each job's creator's Authorization header
        self.router = Starlette(routes=[
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/fine_tuning/jobs", self.create, methods=["POST"]),
            Route("/v1/fine_tuning/jobs", self.list_jobs, methods=["GET"]),
            Route("/v1/fine_tuning/jobs/{id}", self.get_job, methods=["GET"]),
            Route("/v1/fine_tuning/jobs/{id}/events", self.list_events, methods=["GET"]),
            Route("/v1/fine_tuning/jobs/{id}/{action:str}", self.act, methods=["POST"]),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"].startswith(FAKED)) or self.app is None:
            await self.router(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/v1/models" and scope["method"] == "GET":
            await self.models(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's model list with each succeeded job's model added, as an adapter of its base."""
        assert self.app is not None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://app") as inner:
            listed = (await inner.get("/v1/models", headers={k.decode(): v.decode() for k, v in scope["headers"]})).json()
        listed["data"] += [{"id": job.fine_tuned_model, "object": "model", "created": 0, "owned_by": "user",
                            "parent": job.model, "root": job.model}
                           for job in self.jobs.values() if job.fine_tuned_model]
        await JSONResponse(listed)(scope, receive, send)

    async def upload(self, request: Request) -> JSONResponse:
        form = await request.form()
        file, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune" or file is None or isinstance(file, str):
            return _error(400, "file and purpose fine-tune are required", param="file")
        content = await file.read()
        file_id = f"file-{len(self.uploads)}"
        self.uploads[file_id] = (purpose, content)
        return JSONResponse({"object": "file", "id": file_id, "bytes": len(content), "created_at": 0,
                             "filename": file.filename, "purpose": purpose, "status": "processed"})

    async def create(self, request: Request) -> JSONResponse:
        body = await request.json()
        if body.get("training_file") not in self.uploads:
            return _error(400, f"invalid training_file: {body.get('training_file')}", "invalid_training_file",
                          "training_file")
        job = FakeJob(f"ftjob-{len(self.jobs)}", body["model"], body, self.steps, self.outcome)
        self.keys.append(request.headers.get("authorization"))
        self.jobs[job.id] = job
        return JSONResponse(job.card())

    async def list_jobs(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [j.card() for j in reversed(self.jobs.values())],
                             "has_more": False})

    def _job(self, request: Request) -> FakeJob | None:
        return self.jobs.get(request.path_params["id"])

    async def get_job(self, request: Request) -> JSONResponse:
        job = self._job(request)
        if job is None:
            return _error(404, "no such job", "fine_tune_not_found", "id")
        job.advance()
        return JSONResponse(job.card())

    async def list_events(self, request: Request) -> JSONResponse:
        job = self._job(request)
        if job is None:
            return _error(404, "no such job", "fine_tune_not_found", "id")
        newest = job.events[::-1]
        after = request.query_params.get("after")
        if after is not None:
            newest = newest[[e["id"] for e in newest].index(after) + 1:]
        limit = int(request.query_params.get("limit", "20"))
        return JSONResponse({"object": "list", "data": newest[:limit], "has_more": len(newest) > limit})

    async def act(self, request: Request) -> JSONResponse:
        job, action = self._job(request), request.path_params["action"]
        if job is None:
            return _error(404, "no such job", "fine_tune_not_found", "id")
        changes = {"cancel": "cancelled", "pause": "paused", "resume": "running"}
        if action not in changes:
            return _error(404, "no such route")
        job.status = changes[action]
        return JSONResponse(job.card())
