"""What a LoRA must match in its base model, read from the base GGUF's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import gguf

from .errors import ModelFileError
from .gguf_header import GGUFLayoutError, read_metadata
from .model_dims import model_dims

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
        dims = model_dims(path, fields)  # every value checked for type and range (ModelFileError)

        def required(value: int | None, key: str) -> int:
            if value is None:
                _unreadable(path, f"base GGUF lacks {key.format(arch=dims.architecture)}")
            return value

        def widest(per_layer: tuple[int, ...], key: str) -> int:
            # Hybrid models store 0 for layers without attention; those have no q/k/v to adapt.
            return max((v for v in per_layer if v), default=0) if per_layer else required(None, key)

        def uniform(per_layer: tuple[int, ...]) -> bool:
            return len({v for v in per_layer if v}) <= 1

        n_layer = required(dims.n_layer, gguf.Keys.LLM.BLOCK_COUNT)
        n_embd = required(dims.n_embd, gguf.Keys.LLM.EMBEDDING_LENGTH)
        n_head = widest(dims.n_head, gguf.Keys.Attention.HEAD_COUNT)
        if n_head <= 0:
            _unreadable(path, "base GGUF has no attention heads")
        n_head_kv = widest(dims.n_head_kv, gguf.Keys.Attention.HEAD_COUNT_KV) if dims.n_head_kv else n_head
        n_ff = max((v for v in dims.n_ff if v), default=0)
        return cls(
            path=path,
            architecture=dims.architecture,
            n_layer=n_layer,
            n_embd=n_embd,
            n_ff=n_ff,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim_k=n_embd // n_head if dims.key_length is None else dims.key_length,
            head_dim_v=n_embd // n_head if dims.value_length is None else dims.value_length,
            uniform_layers=all(uniform(v) for v in (dims.n_ff, dims.n_head, dims.n_head_kv)),
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
