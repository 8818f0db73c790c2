"""Which chat format a model gets, read from its chat template as llama.cpp's common/chat does: each family's
module says what in a template marks it (DETECT), the most specific markers tried first."""

from __future__ import annotations

from collections.abc import Callable

from . import (
    apertus,
    apriel,
    command_r,
    deepseek,
    functionary,
    gigachat,
    glm,
    granite,
    harmony,
    hermes_family,
    hy3,
    kimi,
    kimi_k3,
    lfm2,
    ling,
    llama3,
    minicpm,
    minimax,
    minimax_m1,
    mistral,
    muse,
    nemotron,
    plain,
    reka,
    solar,
    xml_function,
)
from .base import ChatFormat, Reasoning
from .hermes import HermesSyntax

# A template no family claims: tools in nomoat's <tool_call> blocks (or a bare JSON call), <think> blocks split.
GENERIC = ChatFormat("generic", HermesSyntax(bare_json=True), Reasoning(),
                     note="no family recognised: <tool_call> blocks or a bare JSON call, <think> blocks")

Detector = tuple[int, Callable[[str], bool], ChatFormat]

# Each family module's DETECT: [(priority, test(template) -> bool, format)], tried lowest priority first (the most
# specific markers: Qwen3-Coder's <function= before the <tool_call> that many templates write).
_DETECTORS: list[Detector] = sorted(
    [*apertus.DETECT, *command_r.DETECT, *deepseek.DETECT, *functionary.DETECT, *glm.DETECT, *granite.DETECT,
     *harmony.DETECT, *hermes_family.DETECT, *kimi.DETECT, *llama3.DETECT, *minimax.DETECT, *mistral.DETECT,
     *nemotron.DETECT, *plain.DETECT, *xml_function.DETECT,
     *apriel.DETECT, *kimi_k3.DETECT, *lfm2.DETECT, *minimax_m1.DETECT,
     *gigachat.DETECT, *hy3.DETECT, *ling.DETECT, *minicpm.DETECT, *muse.DETECT, *reka.DETECT, *solar.DETECT],
    key=lambda d: d[0])


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
