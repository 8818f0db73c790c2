"""OpenAI's fine-tuning API: POST/GET /v1/fine_tuning/jobs, one job, its cancel, pause and resume, its events and
checkpoints; and the base models a job may train on, as the tuner asks for them (RegistryBases).

Every job is its creating key's: another key's job is a 404, as a stored response is (response_store.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.fields import Lenient, parse
from ..errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from ..files.store import FileStore
from ..registry import ModelRegistry
from ..residency.reservation import MemoryReservations
from ..settings import Settings
from ..tuning.jobs import Hyperparameters, LoraShape
from ..tuning.plan import FineTuneFiles, TrainBase
from ..tuning.tuner import JobRequest, Tuner, TunerSettings
from ..wire.auth import Authenticator, is_admin
from ..wire.body import read_json
from ..wire.context import RequestContext
from ..wire.routes import Handler

MAX_LIST_LIMIT = 100
Auto = Literal["auto"]


class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"


class SupervisedIn(BaseModel):
    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    type: Literal["supervised"]  # dpo and reinforcement are not trained here
    supervised: SupervisedIn | None = None


class LoraIn(BaseModel):
    """nomoat's extension: the LoRA the job trains."""

    model_config = ConfigDict(extra="forbid")

    rank: int | Auto = "auto"
    alpha: float | Auto = "auto"
    target_modules: list[str] | Auto = "auto"


class CreateJobRequest(Lenient):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=256)
    validation_file: str | None = Field(None, max_length=256)
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: HyperparametersIn | None = None  # OpenAI's older place for them; `method` is the newer
    method: MethodIn | None = None
    lora: LoraIn | None = None

    def to_job(self) -> JobRequest:
        hyper = self.hyperparameters
        if self.method is not None and self.method.supervised is not None and self.method.supervised.hyperparameters:
            hyper = self.method.supervised.hyperparameters
        hyper = hyper or HyperparametersIn()
        lora = self.lora or LoraIn()
        return JobRequest(self.model, self.training_file, self.validation_file, self.suffix, self.seed, self.metadata,
                          Hyperparameters(hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier),
                          LoraShape(lora.rank, lora.alpha, lora.target_modules))


class RegistryBases:
    """The registry's served base models, as the tuner may train on them: a model or alias loaded in this
    process; not an adapter or stack (a LoRA on a LoRA is not trained here), not an `rpc` model's child."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def trainable(self, model_id: str) -> TrainBase:
        registry = self._registry
        if registry.catalogue.get(model_id) is not None or registry.catalogue.stack(model_id) is not None:
            raise InvalidRequestError(f"model {model_id!r} is an adapter or stack: fine-tune its base model instead",
                                      param="model", code="model_not_available")
        if not registry.is_model_id(model_id):
            raise InvalidRequestError(f"model {model_id!r} is not a served base model", param="model",
                                      code="model_not_available")
        name = registry.base_name(model_id)
        config = registry.residency.residents[name].config
        if config.rpc:
            raise InvalidRequestError(f"model {model_id!r} is split across RPC workers: it cannot be fine-tuned on "
                                      "this box", param="model", code="model_not_available")
        return TrainBase(name, Path(config.path), config.n_ctx, config.chat_template)


def _int(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer from 1 to {high}", param=name) from None
    if not 1 <= value <= high:
        raise InvalidRequestError(f"{name} must be an integer from 1 to {high}", param=name)
    return value


def _metadata_filter(request: Request) -> dict[str, str]:
    """OpenAI's `metadata[key]=value` query filters."""
    return {key[len("metadata["):-1]: value for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]")}


def _page(data: list[dict[str, Any]], has_more: bool) -> Response:
    return JSONResponse({"object": "list", "data": data, "has_more": has_more})


def fine_tuning_handlers(tuner: Tuner | None, max_body_bytes: int, body_timeout: float) -> dict[str, Handler]:
    """The fine-tuning routes by their names in the route table; without a tuner each says so (404)."""

    def need() -> Tuner:
        if tuner is None:
            raise NotFoundError("fine-tuning is not available on this server")
        return tuner

    def owner(request: Request) -> str | None:
        return RequestContext.of(request).key_id

    async def create(request: Request) -> Response:
        req: CreateJobRequest = parse(CreateJobRequest, await read_json(request, max_body_bytes, body_timeout))
        job = await need().create(owner(request), req.to_job())
        return JSONResponse(job.to_wire())

    async def list_jobs(request: Request) -> Response:
        data, more = need().list_jobs(owner(request), request.query_params.get("after"),
                                      _int(request, "limit", 20, MAX_LIST_LIMIT), _metadata_filter(request))
        return _page(data, more)

    async def get(request: Request) -> Response:
        return JSONResponse(need().get(owner(request), request.path_params["job_id"]).to_wire())

    async def cancel(request: Request) -> Response:
        return JSONResponse((await need().cancel(owner(request), request.path_params["job_id"])).to_wire())

    async def pause(request: Request) -> Response:
        return JSONResponse((await need().pause(owner(request), request.path_params["job_id"])).to_wire())

    async def resume(request: Request) -> Response:
        return JSONResponse((await need().resume(owner(request), request.path_params["job_id"])).to_wire())

    async def events(request: Request) -> Response:
        data, more = need().events(owner(request), request.path_params["job_id"], request.query_params.get("after"),
                                   _int(request, "limit", 20, MAX_LIST_LIMIT))
        return _page(data, more)

    async def checkpoints(request: Request) -> Response:
        data, more = need().checkpoints(owner(request), request.path_params["job_id"],
                                        request.query_params.get("after"), _int(request, "limit", 10, MAX_LIST_LIMIT))
        return _page(data, more)

    return {"create_fine_tuning_job": create, "list_fine_tuning_jobs": list_jobs, "get_fine_tuning_job": get,
            "cancel_fine_tuning_job": cancel, "pause_fine_tuning_job": pause, "resume_fine_tuning_job": resume,
            "list_fine_tuning_events": events, "list_fine_tuning_checkpoints": checkpoints}


def model_delete_handler(tuner: Tuner | None, auth: Authenticator, pulled: Handler | None) -> Handler:
    """DELETE /v1/models/{id}: an `ft:` model by the key whose job made it (or an admin key; another key: 404);
    any other model, a pulled one (`pulled`, None where the configuration turns it off), with the admin key alone."""

    async def remove_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        context = RequestContext.of(request)
        admin = is_admin(auth, request)
        if tuner is not None and model_id.startswith("ft:"):
            if await tuner.delete_model(context.key_id, model_id, admin):
                return JSONResponse({"id": model_id, "object": "model", "deleted": True})
            if not admin:
                raise NotFoundError(f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        if not admin:
            raise PermissionDeniedError(f"DELETE {request.url.path} removes a pulled model and needs the admin key.")
        if pulled is None:
            raise NotFoundError(f"DELETE /v1/models/{{model_id}} is turned off in this server's configuration "
                                f"(no {model_id!r} was made by a fine-tuning job)")
        return await pulled(request)

    return remove_model


def tuner_for(settings: Settings, registry: ModelRegistry, files: FileStore) -> Tuner:
    """The server's tuner: jobs under <state_dir>/fine_tuning, trainers in the registry's memory budget."""
    threads = settings.train_threads or max(1, (os.cpu_count() or 2) - 1)
    return Tuner(TunerSettings(settings.resolved_state_dir() / "fine_tuning", threads, settings.max_training_jobs,
                               settings.train_idle_priority),
                 RegistryBases(registry), FineTuneFiles(files), registry.catalogue,
                 MemoryReservations(registry.residency))
