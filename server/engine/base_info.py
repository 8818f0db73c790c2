"""What a LoRA must match in its base model, read from the base GGUF's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import gguf

from .errors import ModelFileError

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
        try:
            reader = gguf.GGUFReader(path)
        except (OSError, ValueError, IndexError) as exc:  # what GGUFReader raises on a damaged file
            _unreadable(path, f"base model is not a readable GGUF file ({exc})")
        arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
        if arch_field is None:
            _unreadable(path, "base GGUF has no general.architecture")
        arch = str(arch_field.contents())
        uniform = True

        def number(key: str, default: int | None = None) -> int:
            nonlocal uniform
            field = reader.get_field(key.format(arch=arch))
            if field is None:
                if default is None:
                    _unreadable(path, f"base GGUF lacks {key.format(arch=arch)}")
                return default
            value = field.contents()
            if isinstance(value, list):
                # Hybrid models store 0 for layers without attention; those have no q/k/v to adapt.
                sizes = {int(v) for v in value if v}
                uniform = uniform and len(sizes) <= 1
                return max(sizes, default=0)
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
