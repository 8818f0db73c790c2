"""A LoRA adapter loaded on one model: what the engine holds and frees."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(eq=False)
class LoraAdapter:
    """One adapter file loaded on one base model. `ptr` is llama.cpp's `llama_adapter_lora *`."""

    name: str
    source: Path  # what the user named: a GGUF file or a PEFT directory
    gguf_path: Path  # what llama.cpp loaded
    content_hash: str
    ptr: Any = field(default=None, repr=False)
    unloading: bool = False
