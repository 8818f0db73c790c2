"""`nomoat ps`: the running server's loaded models, as its GET /models lists them, in a table."""

from __future__ import annotations

import json
import time
from typing import Any

from ..client import ServerClient, ServerRefused
from ..quantities import format_size
from ..settings import Settings

_HEADER = ("MODEL", "STATUS", "MEMORY", "CACHE", "ADAPTERS", "UNLOADS")


def fetch_models(settings: Settings, timeout: float = 10.0) -> list[dict[str, Any]]:
    """GET /models of the server these settings describe, with its admin key, else its first API key."""
    with ServerClient(settings).open("GET", "/models", timeout=timeout) as answer:
        return list(json.load(answer)["data"])


def render(cards: list[dict[str, Any]], now: float | None = None) -> str:
    """One row per loaded (or loading) model: its memory estimate, its prompt cache's RAM, adapters and when it
    unloads."""
    now = time.time() if now is None else now
    rows = [_HEADER]
    for card in cards:
        if card.get("id") != card.get("root") or card.get("status") not in ("loaded", "loading"):
            continue  # aliases, adapters and stacks; models not loaded
        rows.append((card["id"], card["status"], format_size(card["memory_bytes"] or 0),
                     format_size(card.get("prompt_cache_bytes") or 0),
                     ", ".join(card.get("adapters") or []) or "-", _unloads(card, now)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _unloads(card: dict[str, Any], now: float) -> str:
    if card.get("pinned"):
        return "never (pinned)"
    if card.get("busy"):
        return "when idle (in use)"
    expires = card.get("expires_at")
    if expires is None:
        return "never"
    left = max(0, int(expires - now))
    return f"in {left // 3600}h {left % 3600 // 60}m" if left >= 3600 else f"in {left // 60}m {left % 60}s"


def ps(settings: Settings) -> tuple[int, str]:
    """The exit code and what to print."""
    try:
        cards = fetch_models(settings)
    except ServerRefused as exc:
        if exc.status == 0:
            return 1, f"nomoat ps: {exc.message}"
        hint = {401: " (it wants a key: pass --api-key or --admin-key, or set NOMOAT_API_KEY or NOMOAT_ADMIN_KEY, "
                     "as the server was started with)", 403: " (the key given is not an admin key)"}.get(exc.status, "")
        return 1, f"nomoat ps: the server at {settings.client_url()} answered {exc.status}: {exc.message}{hint}"
    return 0, render(cards)
