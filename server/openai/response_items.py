"""A response's input items as kept (each with an id) and as listed by GET /v1/responses/{id}/input_items,
one cursor page at a time (OpenAI's `after`, `before`, `limit` 1-100 and `order`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import InvalidRequestError
from .responses_events import item_id
from .responses_protocol import InputItem

# The id prefix of each item kind, as OpenAI names them.
_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
MAX_LIMIT = 100


def stored_items(items: list[InputItem]) -> list[dict[str, Any]]:
    """Items as JSON to keep with a stored response: typed, and with an id for input_items' cursors."""
    return [{**item.model_dump(mode="json", exclude_none=True), "type": item.kind,
             "id": item.id or item_id(_PREFIXES.get(item.kind, "item"))} for item in items]


@dataclass(frozen=True)
class PageQuery:
    """input_items' query string, checked: a bad value is a 400 naming it."""

    limit: int = 20
    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    before: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> PageQuery:
        raw = query.get("limit", "20")
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw[:40]!r}",
                                      param="limit", code="invalid_value")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError(f"order must be 'asc' or 'desc', not {order[:40]!r}", param="order",
                                      code="invalid_value")
        return cls(limit, "asc" if order == "asc" else "desc", query.get("after"), query.get("before"))


def page(items: list[dict[str, Any]], query: PageQuery) -> dict[str, Any]:
    """One page of `items` (oldest first) as OpenAI's list object."""
    ordered = items if query.order == "asc" else items[::-1]
    ids = [item.get("id") for item in ordered]
    start = _index(ids, query.after, "after") + 1 if query.after is not None else 0
    end = _index(ids, query.before, "before") if query.before is not None else len(ordered)
    window = ordered[start:end]
    # `before` alone pages backwards: the items just before the cursor.
    chosen = window[-query.limit:] if query.before is not None and query.after is None else window[:query.limit]
    data = [_listed(item) for item in chosen]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(window) > len(chosen)}


def _index(ids: list[Any], cursor: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise InvalidRequestError(f"no input item with id {cursor[:100]!r} in this response", param=param,
                                  code="invalid_value") from None


def _listed(item: dict[str, Any]) -> dict[str, Any]:
    """A message's text as the content parts OpenAI lists (a string input is one `input_text` part)."""
    if item.get("type") != "message" or not isinstance(item.get("content"), str):
        return item
    kind = "output_text" if item.get("role") == "assistant" else "input_text"
    return {**item, "content": [{"type": kind, "text": item["content"]}]}
