"""GET /status: what the web page's server panel shows, read from the registry and engines as JSON.

The same figures /metrics exports (queue depth, active sequences, tokens), shaped for a page that
does not parse Prometheus text, plus what the caller's key may do there. It takes the access of
/v1/models (a user key where keys are set), and a key that is not an admin's sees load errors
without the server's file paths (`without_paths`, which /v1/models applies too).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..metrics import Metrics
from ..registry import ModelRegistry
from ..wire.auth import Authenticator, is_admin
from ..wire.redact import without_paths
from ..wire.routes import match

# The model lifecycle routes; the page offers load/unload only where they exist.
_LIFECYCLE_ROUTE = ("POST", "/models/load")


class ServerStatus:
    """Builds the status document; `started` is when the server began serving. `runtime_adapters`: adapter
    directories are configured, so POST /v1/adapters may load one (the page offers it only then)."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics, auth: Authenticator, runtime_adapters: bool) -> None:
        self.registry = registry
        self.metrics = metrics
        self.auth = auth
        self.runtime_adapters = runtime_adapters
        self.started = time.monotonic()

    async def handle(self, request: Request) -> Response:
        return JSONResponse(self.document(is_admin(self.auth, request)))

    def document(self, admin: bool) -> dict[str, Any]:
        models = self.models(admin)
        memory = [m["memory_bytes"] for m in models if m["memory_bytes"] is not None]
        rate = self.metrics.recent_tokens
        return {
            "object": "status",
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "ready": self.registry.ready,
            "admin": admin,
            "model_lifecycle": match(*_LIFECYCLE_ROUTE).endpoint is not None,
            "runtime_adapters": self.runtime_adapters,
            # Rates over the time tokens were being generated (metrics.TokenRate), as the page measures an answer.
            "tokens_per_second": round(rate.per_second(), 2),
            "tokens_window_seconds": rate.window,
            "generating_seconds": round(rate.generating_seconds(), 3),
            "last_tokens_per_second": None if rate.last is None else round(rate.last, 2),
            "totals": {
                "models_loaded": sum(m["status"] == "loaded" for m in models),
                "active_sequences": sum(m["active_sequences"] for m in models),
                "queue_depth": sum(m["queue_depth"] for m in models),
                "memory_bytes": sum(memory) if memory else None,
                "completion_tokens": rate.total,
            },
            "models": models,
        }

    def models(self, admin: bool) -> list[dict[str, Any]]:
        """One entry per model, loaded or not: where it stands (status, memory estimate, when it unloads),
        its load figures while loaded, and its adapters and stacks by name; file paths for an admin only."""
        catalogue = self.registry.catalogue
        engines = self.registry.engines()
        out = []
        for served in self.registry.served_ids():
            if served.kind != "model" or served.state is None:
                continue
            state, engine = served.state, engines.get(served.id)
            out.append({
                "id": served.id,
                "status": state.status,
                "pinned": state.pinned,
                "memory_bytes": state.memory,
                "prompt_cache_bytes": state.prompt_cache_bytes,
                "expires_at": None if state.expires_at is None else int(state.expires_at),
                "error": state.error if admin or state.error is None
                else without_paths(state.error, str(self.registry.base_path(served.id))),
                "active_sequences": engine.active if engine is not None else 0,
                "queue_depth": engine.waiting if engine is not None else 0,
                "parallel": engine.info.parallel if engine is not None else None,
                "max_model_len": served.max_model_len,
                "adapters": sorted(e.name for e in catalogue.entries() if e.base == served.id),
                "stacks": sorted(s.name for s in catalogue.stacks() if s.base == served.id),
            })
        return sorted(out, key=lambda m: m["id"])
