"""A pydantic ValidationError as the lines a user reads: one per problem, each saying where the bad value was
written (a flag, a variable, a file) and, for an unknown key, the known one it is closest to."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError


def format_validation_error(exc: ValidationError, source: str,
                            origin: Callable[[str], str] | None = None,
                            schema: type[BaseModel] | None = None) -> str:
    """One line per problem: `source: key.path: message (got value)`; `origin` names a key's source; `schema`,
    the model validated, lets an unknown key suggest the known one it is closest to."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        where = origin(str(err["loc"][0])) if origin is not None and err["loc"] else source
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(str(err["loc"][-1]), _known_keys(schema, err["loc"]), n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        got = err.get("input")
        # A check across a whole table (loc empty) has the table as its input: its message says what is wrong.
        quiet = err["type"] in ("missing", "extra_forbidden") or not err["loc"]
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"{where}: {key}: {msg}{shown}")
    return "\n".join(lines)


def _known_keys(schema: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table holding `loc`'s last key accepts, found by walking `schema` down `loc`."""
    model = schema
    for part in loc[:-1]:
        if model is None:
            return []
        if isinstance(part, int):
            continue  # an index into a list: the list's items are the model already found
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, directly or in a list or an optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
