"""Reka Edge writes Hermes' <tool_call> JSON blocks and thinks in a <think> block its template opens
(`assistant: <think>\\n` with enable_thinking): QwQ's format (formats/hermes_family.py), detected from
Reka's image token (its template has no ChatML markers for QwQ's own test).
"""

from __future__ import annotations

from .hermes import OPEN
from .hermes_family import QWQ

DETECT = [(40, lambda src: "<REKA_IMG_TOKEN>" in src and OPEN in src, QWQ)]
