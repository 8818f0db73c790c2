"""GET /openapi.json: the whole API (every protocol's routes) as an OpenAPI 3.1 document, its paths from the
route table and its request bodies from the same pydantic models that validate requests, so the published
schema cannot drift."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..anthropic.protocol import CountTokensRequest, MessagesRequest
from ..core.fields import ModelRef
from ..openai.adapters import LoadAdapterRequest
from ..openai.embeddings import EmbeddingRequest
from ..openai.fine_tuning import CreateJobRequest
from ..openai.protocol import ChatCompletionRequest, CompletionRequest
from ..openai.rerank import RerankRequest, ScoreRequest
from ..openai.responses_protocol import ResponsesRequest
from ..openai.tokenize import DetokenizeRequest, TokenizeRequest
from ..wire.routes import ENDPOINTS, Access, Endpoint
from .pull import PullBody

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"

# The body each POST endpoint validates, by its name in the route table. /admin/reload takes none.
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
    "rerank": RerankRequest,
    "score": ScoreRequest,
    "create_response": ResponsesRequest,
    "count_response_tokens": ResponsesRequest,
    "messages": MessagesRequest,
    "count_tokens": CountTokensRequest,
    "load_adapter": LoadAdapterRequest,
    "tokenize": TokenizeRequest,
    "detokenize": DetokenizeRequest,
    "apply_template": ChatCompletionRequest,
    "load_model": ModelRef,
    "unload_model": ModelRef,
    "pull_model": PullBody,
    "create_fine_tuning_job": CreateJobRequest,
}

SUMMARIES: dict[str, str] = {
    "health": "Readiness: 200 once every load = \"startup\" model is loaded, 503 while loading",
    "metrics": "Prometheus metrics",
    "openapi": "This document",
    "api_index": "The API's index: version, the page's and this document's URLs, every endpoint below /v1",
    "list_models": "List every available model with its state (loaded or not, memory, when it unloads), and adapters",
    "get_model": "One model by id (ids may hold '/')",
    "chat": "Create a chat completion (stream: true answers server-sent events)",
    "completions": "Create a text completion (stream: true answers server-sent events)",
    "embeddings": "Create embeddings",
    "rerank": "Rerank documents against a query with a reranker model (Jina's and Cohere's shape, as llama.cpp's "
              "and vLLM's servers answer it): results sorted by relevance_score, cut to top_n",
    "score": "Score text pairs with a reranker model (vLLM's /score): one text_1 against each text_2, or pair by pair",
    "create_response": "Create a response (Responses API; stream: true answers semantic server-sent events)",
    "get_response": "A stored response by id",
    "delete_response": "Delete a stored response",
    "list_response_input_items": "The input items a stored response ran on, earlier turns' included "
                                 "(cursor pages: after, before, limit 1-100, order asc|desc, default desc)",
    "count_response_tokens": "Count a Responses request's prompt tokens: {\"object\": \"response.input_tokens\", "
                             "\"input_tokens\": N}",
    "create_file": "Upload a file (OpenAI's Files API): multipart/form-data with the parts file and purpose (fine-tune, "
                   "batch, user_data, assistants, vision, evals); at most max_file_bytes (413); a fine-tune file is "
                   "checked line by line first (400 naming the line)",
    "list_files": "The caller's files, newest first (cursor pages: after, limit 1-10000, order asc|desc, purpose)",
    "get_file": "One of the caller's files (another key's file: 404)",
    "file_content": "A file's bytes (application/octet-stream)",
    "delete_file": "Delete one of the caller's files: {\"id\", \"object\": \"file\", \"deleted\": true}",
    "messages": "Create a message, as Anthropic's Messages API (stream: true answers its server-sent events)",
    "count_tokens": "Count a message request's prompt tokens, as Anthropic's Messages API",
    "tokenize": "Tokenize text with a model's vocabulary (llama.cpp's server route): {\"tokens\": [...]}",
    "detokenize": "Token ids back to text (llama.cpp's server route): {\"content\": \"...\"}",
    "apply_template": "The prompt text a chat request's template renders, without generating: {\"prompt\": \"...\"}",
    "list_adapters": "List the loaded LoRA adapters",
    "load_adapter": "Load a LoRA adapter from the configured adapter directories",
    "unload_adapter": "Unload a LoRA adapter",
    "reload": "Reload models.toml (as SIGHUP does); 404 when the server was not started from a config file",
    "status": "The server panel's figures as JSON: loaded models, queue depth, active sequences, recent tokens/s",
    "ui_index": "The web page: chat, adapter mixer, side by side, server panel (404 with --no-ui)",
    "ui_file": "The web page's scripts, styles and icons; any other path: 404",
    "load_model": "Load a model now (llama.cpp router's route; admin key); keep_alive as on requests",
    "unload_model": "Unload a model: 200 at once when idle, 202 when busy (it unloads once its requests end), "
                    "409 when pinned",
    "pull_model": "Download OWNER/REPO[:QUANT] from the Hugging Face Hub into the server's cache and serve it "
                  "(admin key): server-sent events, each file's progress, then the model's name and path, or an error",
    "list_store": "Every model the server serves with its source (models.toml, models-dir, pulled), size and path "
                  "(admin key; `nomoat ls`)",
    "remove_model": "Delete a fine-tuned ft: model (the key whose job made it, or the admin key), or forget a pulled "
                    "model and delete its files (admin key; `nomoat rm`); other models are removed by editing "
                    "models.toml or the models dir (404)",
    "create_fine_tuning_job": "Create a fine-tuning job (OpenAI's shape): a LoRA trained on this box from a fine-tune "
                              "file, served as ft:<model>:<suffix>:<job-id> once it succeeds",
    "list_fine_tuning_jobs": "The caller's fine-tuning jobs, newest first (after, limit 1-100, metadata[k]=v)",
    "get_fine_tuning_job": "One of the caller's fine-tuning jobs (another key's: 404)",
    "cancel_fine_tuning_job": "Cancel a job: its trainer is stopped and its memory freed",
    "pause_fine_tuning_job": "Pause a running job at its next step, with a checkpoint to resume from",
    "resume_fine_tuning_job": "Resume a paused job from its last checkpoint",
    "list_fine_tuning_events": "A job's events, newest first (after, limit): messages, and metrics per step "
                               "(train_loss, valid_loss, train_mean_token_accuracy)",
    "list_fine_tuning_checkpoints": "A job's kept checkpoints, each servable as ft:...:ckpt-step-N once the job succeeds",
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape: every error answer, of every route, has it.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "examples": ["invalid_request_error", "authentication_error",
                                                    "permission_error", "rate_limit_error", "server_error"]},
            "param": {"type": ["string", "null"], "description": "The request field at fault, e.g. messages[0].content"},
            "code": {"type": ["string", "null"]},
        },
    }},
}

ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Anthropic's error shape: every error answer of the Anthropic routes (/v1/messages...) has it.",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {"type": "object", "required": ["type", "message"], "properties": {
            "type": {"type": "string", "examples": ["invalid_request_error", "authentication_error", "not_found_error",
                                                    "rate_limit_error", "api_error", "overloaded_error"]},
            "message": {"type": "string"},
            "details": {"type": "object", "description": "On a refusal a client can fall back from: its "
                        "error_code (thread_unsupported_request: resend the conversation without thread)."},
        }},
    },
}

# The errors a route can answer besides `default`, by what it takes and does; all have the Error shape.
_BODY_ERRORS = {"400": "Invalid request", "404": "No such model or adapter", "408": "The body arrived too slowly",
                "413": "The body is too large"}
_PATH_ERRORS = {"404": "Not found"}
_AUTH_ERRORS = {"401": "Missing or wrong API key"}
_ADMIN_ERRORS = {"403": "The route needs the admin key, or the path is outside the adapter directories"}
_BUSY_ERRORS = {"429": "Too many concurrent requests (Retry-After says when to retry)",
                "503": "Loading or shutting down (Retry-After says when to retry)"}

_PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document; built once, as the models and the route table never change at runtime."""
    model_refs, defs = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS.values()], ref_template=REF_TEMPLATE
    )
    schemas = {**defs.get("$defs", {}), "Error": ERROR_SCHEMA, "AnthropicError": ANTHROPIC_ERROR_SCHEMA}
    bodies = {name: model_refs[(model, "validation")] for name, model in REQUEST_MODELS.items()}
    paths: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for endpoint in ENDPOINTS:
        template = _PATH_PARAM.sub(r"{\1}", endpoint.path)
        operation = _operation(endpoint, bodies.get(endpoint.name))
        if endpoint.name in seen:  # a second path for one handler (/v2/rerank): operation ids must be unique
            operation["operationId"] = f"{endpoint.name}_{template.strip('/').split('/')[0]}"
        seen.add(endpoint.name)
        paths.setdefault(template, {})[endpoint.method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "nomoat",
            "version": __version__,
            "description": (
                "A local, OpenAI-compatible model server. Every /v1 route also answers without its /v1 "
                "prefix (/chat/completions, /models...), as llama.cpp's server does. Request bodies ignore "
                "unknown fields, and a null field takes its default. Errors use OpenAI's shape (Error)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": {
                    "description": "An error, in OpenAI's shape",
                    "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="Error")}}},
                },
                "AnthropicError": {
                    "description": "An error, in Anthropic's shape",
                    "content": {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="AnthropicError")}}},
                },
            },
            "securitySchemes": {"bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key, needed only when the server has keys configured "
                               "(NOMOAT_API_KEY); admin routes take the admin key (NOMOAT_ADMIN_KEY).",
            }},
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(endpoint: Endpoint, body_ref: dict[str, Any] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": SUMMARIES[endpoint.name],
        "responses": _responses(endpoint, body_ref is not None),
    }
    names = _PATH_PARAM.findall(endpoint.path)
    if names:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names
        ]
    if body_ref is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_ref}}}
    if endpoint.access is Access.PUBLIC:
        operation["security"] = []
    return operation


def _responses(endpoint: Endpoint, has_body: bool) -> dict[str, Any]:
    ok = "201" if endpoint.name == "load_adapter" else "200"
    success: dict[str, Any] = {"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}}
    if endpoint.name == "metrics":
        success["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif endpoint.name.startswith("ui_"):
        success["content"] = {"text/html": {"schema": {"type": "string"}}} if endpoint.name == "ui_index" \
            else {"*/*": {"schema": {"type": "string"}}}
    elif endpoint.generates and endpoint.name not in ("embeddings", "rerank", "score"):
        success["content"]["text/event-stream"] = {"schema": {
            "type": "string", "description": "With stream: true, `data: {chunk}` events, then `data: [DONE]`"
            if endpoint.dialect == "openai" else "With stream: true, `event: <type>` and `data: {event}` lines",
        }}
    if endpoint.name == "health":
        return {ok: success, "503": {"description": "Still loading: {\"status\": \"loading\"}, with Retry-After"}}
    errors: dict[str, str] = {}
    if has_body:
        errors |= _BODY_ERRORS
    if _PATH_PARAM.search(endpoint.path):
        errors |= _PATH_ERRORS
    if endpoint.access is not Access.PUBLIC:
        errors |= _AUTH_ERRORS
    if endpoint.access is Access.ADMIN:
        errors |= _ADMIN_ERRORS
    if endpoint.generates:
        errors |= _BUSY_ERRORS
    error_ref = {"$ref": "#/components/responses/" + ("AnthropicError" if endpoint.dialect == "anthropic" else "Error")}
    return {ok: success, **{status: {**error_ref, "description": text} for status, text in sorted(errors.items())},
            "default": error_ref}


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())
