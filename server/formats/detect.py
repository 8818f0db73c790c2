"""Which chat format a model gets, read from its chat template as llama.cpp's common/chat does: each family's
module says what in a template marks it (DETECT), the most specific markers tried first."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from .base import ChatFormat, Reasoning
from .hermes import HermesSyntax

log = logging.getLogger(__name__)

# A template no family claims: tools in nomoat's <tool_call> blocks (or a bare JSON call), <think> blocks split.
GENERIC = ChatFormat("generic", HermesSyntax(bare_json=True), Reasoning(),
                     note="no family recognised: <tool_call> blocks or a bare JSON call, <think> blocks")

# The family modules; each holds DETECT: [(priority, test(template) -> bool, format)], lower priority first.
_MODULES = ("hermes_family", "llama3", "mistral", "functionary", "plain", "harmony", "command_r", "granite",
            "deepseek", "kimi", "glm", "minimax", "xml_function", "apertus", "nemotron")

Detector = tuple[int, Callable[[str], bool], ChatFormat]


def _detectors() -> list[Detector]:
    found: list[Detector] = []
    for name in _MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        found += module.DETECT
    return sorted(found, key=lambda d: d[0])


_DETECTORS = _detectors()


def detect(template: str | None) -> ChatFormat:
    """The format of the family whose markers the template carries; GENERIC when none does."""
    if template:
        for _, test, fmt in _DETECTORS:
            if test(template):
                return fmt
    return GENERIC


def formats() -> list[ChatFormat]:
    """Every known format, GENERIC last (docs and tests walk them)."""
    seen: dict[str, ChatFormat] = {}
    for _, _, fmt in _DETECTORS:
        seen.setdefault(fmt.name, fmt)
    return [*seen.values(), GENERIC]
