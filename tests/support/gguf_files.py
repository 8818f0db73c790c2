"""GGUF files written byte by byte: valid tiny models, and headers that lie (wrong types, NaN, huge counts, cut short).

gguf.GGUFWriter writes only what is consistent; these builders write whatever a hostile file may claim.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

V = gguf.GGUFValueType
_FORMATS = {V.UINT8: "B", V.INT8: "b", V.BOOL: "?", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
            V.FLOAT32: "f", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
ALIGNMENT = 32


@dataclass(frozen=True)
class Array:
    """An array value; `claimed` overrides the length written before the items."""

    item_type: gguf.GGUFValueType
    items: Sequence[Any] = ()
    claimed: int | None = None


@dataclass
class Header:
    """Metadata (key → (type, value)) and F32 tensors (name → dims); `claimed_*` override the counts written,
    and without `with_data` the tensors' data is left out (a header claiming more than its file holds)."""

    kv: dict[str, tuple[gguf.GGUFValueType, Any]] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    claimed_kv: int | None = None
    claimed_tensors: int | None = None
    with_data: bool = True

    def bytes(self) -> bytes:
        out = bytearray(b"GGUF" + struct.pack("<I", 3))
        out += struct.pack("<QQ", len(self.tensors) if self.claimed_tensors is None else self.claimed_tensors,
                           len(self.kv) if self.claimed_kv is None else self.claimed_kv)
        for key, (value_type, value) in self.kv.items():
            out += _string(key) + struct.pack("<I", value_type) + _value(value_type, value)
        offset = 0
        for name, dims in self.tensors.items():
            out += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            out += struct.pack("<IQ", gguf.GGMLQuantizationType.F32, offset)
            offset += -(-_elements(dims) * 4 // ALIGNMENT) * ALIGNMENT
        out += b"\0" * (-len(out) % ALIGNMENT)
        return bytes(out + b"\0" * (offset if self.with_data else 0))

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


def tiny_model(arch: str = "llama", **overrides: tuple[gguf.GGUFValueType, Any]) -> Header:
    """A llama-shaped model small enough to write in a test: 2 layers, 8 wide, 2 heads, a 16-token vocabulary.

    `overrides` replace metadata by key suffix (`block_count=(V.STRING, "abc")` sets `llama.block_count`).
    """
    kv: dict[str, tuple[gguf.GGUFValueType, Any]] = {
        "general.architecture": (V.STRING, arch),
        f"{arch}.block_count": (V.UINT32, 2),
        f"{arch}.context_length": (V.UINT32, 256),
        f"{arch}.embedding_length": (V.UINT32, 8),
        f"{arch}.feed_forward_length": (V.UINT32, 16),
        f"{arch}.attention.head_count": (V.UINT32, 2),
        f"{arch}.attention.head_count_kv": (V.UINT32, 1),
    }
    for suffix, value in overrides.items():
        kv[f"{arch}.{suffix.replace('__', '.')}"] = value
    tensors = {"token_embd.weight": (8, 16), "blk.0.attn_q.weight": (8, 8), "blk.1.attn_q.weight": (8, 8)}
    return Header(kv=kv, tensors=tensors)


def _elements(dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _string(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")  # a hostile file holds any bytes
    return struct.pack("<Q", len(data)) + data


def _value(value_type: gguf.GGUFValueType, value: Any) -> bytes:
    if value_type == V.STRING:
        return _string(value)
    if value_type == V.ARRAY:
        assert isinstance(value, Array)
        length = len(value.items) if value.claimed is None else value.claimed
        return struct.pack("<IQ", value.item_type, length) + b"".join(_value(value.item_type, v) for v in value.items)
    return struct.pack("<" + _FORMATS[value_type], value)
