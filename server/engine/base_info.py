"""What a LoRA must match in its base model, read from the base GGUF's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import gguf

from .errors import ModelFileError
from .gguf_header import GGUFLayoutError, read_metadata

_T = gguf.MODEL_TENSOR


def _unreadable(path: Path, reason: str) -> NoReturn:
    raise ModelFileError(f"{path}: {reason}")


@dataclass(frozen=True)
class BaseModelInfo:
    """What a LoRA must match in its base model, read from the base GGUF's metadata."""

    path: Path
    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    # False when head counts or n_ff differ between layers (deci, openelm): the checks here assume
    # one size per kind of matrix, so such bases are refused rather than half-checked.
    uniform_layers: bool = True

    @classmethod
    def from_gguf(cls, path: Path) -> BaseModelInfo:
        # Only the header's dimensions, read by the bounded walk: GGUFReader would build an object per
        # tokenizer entry first (seconds for a 49k vocabulary).
        try:
            fields = read_metadata(path, lambda key: key == "general.architecture"
                                   or not key.startswith(("tokenizer.", "general.")))
        except OSError as exc:
            _unreadable(path, f"base model cannot be read ({exc.strerror or exc})")
        except GGUFLayoutError as exc:
            _unreadable(path, f"base model is not a readable GGUF file ({exc})")
        arch = fields.get(gguf.Keys.General.ARCHITECTURE)
        if not isinstance(arch, str):
            _unreadable(path, "base GGUF has no general.architecture")
        uniform = True

        def number(key: str, default: int | None = None) -> int:
            nonlocal uniform
            value = fields.get(key.format(arch=arch))
            if value is None:
                if default is None:
                    _unreadable(path, f"base GGUF lacks {key.format(arch=arch)}")
                return default
            if isinstance(value, list):
                # Hybrid models store 0 for layers without attention; those have no q/k/v to adapt.
                sizes = {int(v) for v in value if v}
                uniform = uniform and len(sizes) <= 1
                return max(sizes, default=0)
            if isinstance(value, str):
                _unreadable(path, f"base GGUF's {key.format(arch=arch)} is not a number")
            return int(value)

        n_embd = number(gguf.Keys.LLM.EMBEDDING_LENGTH)
        n_head = number(gguf.Keys.Attention.HEAD_COUNT)
        if n_head <= 0:
            _unreadable(path, "base GGUF has no attention heads")
        return cls(
            path=path,
            architecture=arch,
            n_layer=number(gguf.Keys.LLM.BLOCK_COUNT),
            n_embd=n_embd,
            n_ff=number(gguf.Keys.LLM.FEED_FORWARD_LENGTH, 0),
            n_head=n_head,
            n_head_kv=number(gguf.Keys.Attention.HEAD_COUNT_KV, n_head),
            head_dim_k=number(gguf.Keys.Attention.KEY_LENGTH, n_embd // n_head),
            head_dim_v=number(gguf.Keys.Attention.VALUE_LENGTH, n_embd // n_head),
            uniform_layers=uniform,
        )

    def module_dims(self, tensor: gguf.MODEL_TENSOR) -> tuple[int, int]:
        """(n_in, n_out) of the base weight a LoRA on `tensor` adapts."""
        q_width, kv_width = self.n_head * self.head_dim_k, self.n_head_kv * self.head_dim_k
        return {
            _T.ATTN_Q: (self.n_embd, q_width),
            _T.ATTN_K: (self.n_embd, kv_width),
            _T.ATTN_V: (self.n_embd, self.n_head_kv * self.head_dim_v),
            _T.ATTN_OUT: (self.n_head * self.head_dim_v, self.n_embd),
            _T.FFN_GATE: (self.n_embd, self.n_ff),
            _T.FFN_UP: (self.n_embd, self.n_ff),
            _T.FFN_DOWN: (self.n_ff, self.n_embd),
        }[tensor]
