"""Models pulled with `nomoat pull`: a small manifest in the state dir naming each one's files in the Hub cache."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

log = logging.getLogger(__name__)

MANIFEST_NAME = "pulled.json"


class PulledModel(BaseModel):
    """One pulled model: the name it was pulled as (the id clients send) and where its files are."""

    name: str = Field(description="As pulled: OWNER/REPO or OWNER/REPO:QUANT, in the user's case.")
    repo: str
    commit: str = Field(description="The cached snapshot the files are in.")
    files: list[str] = Field(min_length=1, description="Repo paths; a split model's parts in order.")
    size: int = Field(ge=0, description="Bytes on disk when pulled.")
    pulled_at: float = Field(default_factory=time.time)


class _Manifest(BaseModel):
    models: list[PulledModel] = Field(default_factory=list)


class PulledManifest:
    """The manifest file: read whole, written whole by an atomic replace."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / MANIFEST_NAME

    def entries(self) -> list[PulledModel]:
        """Every pulled model; an unreadable manifest is logged and read as empty, never fatal to a start."""
        try:
            return _Manifest.model_validate_json(self.path.read_bytes()).models
        except FileNotFoundError:
            return []
        except (OSError, ValidationError) as exc:
            log.warning("%s cannot be read, pulled models are not listed: %s", self.path, exc)
            return []

    def get(self, name: str) -> PulledModel | None:
        return next((m for m in self.entries() if m.name == name), None)

    def add(self, entry: PulledModel) -> None:
        """Record `entry`, replacing one of the same name (a model pulled again)."""
        self._write([m for m in self.entries() if m.name != entry.name] + [entry])

    def remove(self, name: str) -> PulledModel | None:
        entries = self.entries()
        found = next((m for m in entries if m.name == name), None)
        if found is not None:
            self._write([m for m in entries if m.name != name])
        return found

    def _write(self, entries: list[PulledModel]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        tmp.write_text(_Manifest(models=entries).model_dump_json(indent=2) + "\n")
        os.replace(tmp, self.path)
