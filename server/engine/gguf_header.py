"""A GGUF header walk bounded by caps and by the file's size: layout checks, and metadata without the rest.

GGUFReader trusts the counts it reads: an array claiming 2**62 items makes it loop past the end of
the file, building a numpy view per item, until memory runs out. It also builds a Python object
per array item, so reading a model's few dimensions takes seconds (its tokenizer holds ~100k
strings). This walk reads the same header front to back, skips what it is not asked for, and
refuses what does not fit.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import gguf

# Far above any LoRA adapter (a handful of keys, a few thousand tensors), and low enough that the
# Python objects GGUFReader builds per key, array item and tensor stay within a few hundred MB.
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 16
MAX_ARRAY_ITEMS = 1 << 20  # all arrays of a file together
# A model's arrays skipped unread (its vocabulary: tokens, scores, types, merges) run to about a million items
# for a 262k vocabulary; each skipped string costs about a microsecond, so this caps a hostile walk at ~20 s.
MAX_MODEL_ARRAY_ITEMS = 1 << 24
MAX_NAME_BYTES = 1 << 16  # keys and tensor names
MAX_STRING_BYTES = 1 << 26
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
_INT64_MAX = (1 << 63) - 1

_V = gguf.GGUFValueType
_SCALAR_SIZES = {
    _V.UINT8: 1, _V.INT8: 1, _V.BOOL: 1, _V.UINT16: 2, _V.INT16: 2, _V.UINT32: 4, _V.INT32: 4,
    _V.FLOAT32: 4, _V.UINT64: 8, _V.INT64: 8, _V.FLOAT64: 8,
}
_SCALAR_FORMATS = {
    _V.UINT8: "B", _V.INT8: "b", _V.BOOL: "?", _V.UINT16: "H", _V.INT16: "h", _V.UINT32: "I", _V.INT32: "i",
    _V.FLOAT32: "f", _V.UINT64: "Q", _V.INT64: "q", _V.FLOAT64: "d",
}


# The fewest bytes each record can take, so that a count can be checked against the bytes left before
# anything is read or built per item: a key/value (key length, type, a one-byte value), a tensor info
# (name length, dimension count, type, offset), a string (its length).
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
_MIN_STRING_BYTES = 8

_SKIPPED = object()


class GGUFLayoutError(ValueError):
    """The file is not a GGUF file whose header fits it; the message names the file and the reason."""


class TruncatedGGUFError(GGUFLayoutError):
    """The file ends before what its header describes: damaged, or a copy still being written."""


class _Cursor:
    """Reads a GGUF header front to back; nothing is read or skipped past the end of the file."""

    def __init__(self, stream: BinaryIO, path: Path) -> None:
        self._stream, self._path = stream, path
        self.size = os.fstat(stream.fileno()).st_size
        self.pos = 0
        self.order = "<"
        self.array_items = 0  # skipped
        self.read_items = 0
        self.alignment = gguf.GGUF_DEFAULT_ALIGNMENT
        self.max_skipped_items = MAX_ARRAY_ITEMS

    def bad(self, reason: str) -> GGUFLayoutError:
        return GGUFLayoutError(f"{self._path}: not a valid GGUF file: {reason}")

    def truncated(self, reason: str) -> TruncatedGGUFError:
        return TruncatedGGUFError(f"{self._path}: not a complete GGUF file: {reason}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.truncated(f"{what} needs {n} bytes at offset {self.pos}, the file has "
                                 f"{self.size - self.pos} left")

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self._stream.read(n)
        if len(data) != n:
            raise self.truncated(f"{what}: the file shrank while being read")
        self.pos += n
        return data

    def fits(self, count: int, item_bytes: int, what: str) -> None:
        """Refuse `count` items of at least `item_bytes` each that cannot fit in what is left of the file."""
        if count * item_bytes > self.size - self.pos:  # a lie, or a copy still being written: as `need` says
            raise self.truncated(f"{what} claims {count} items of at least {item_bytes} bytes each, more than the "
                           f"{self.size - self.pos} bytes left in the file")

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n
        self._stream.seek(self.pos)

    def u32(self, what: str) -> int:
        value: int = struct.unpack(self.order + "I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack(self.order + "Q", self.take(8, what))[0]
        return value

    def name(self, what: str) -> str:
        length = self.u64(f"the length of {what}")
        if length > MAX_NAME_BYTES:
            raise self.bad(f"{what} is {length} bytes long (at most {MAX_NAME_BYTES})")
        return self.take(length, what).decode("utf-8", errors="replace")

    def scalar(self, value_type: gguf.GGUFValueType, what: str) -> int | float | bool:
        value = struct.unpack(self.order + _SCALAR_FORMATS[value_type], self.take(_SCALAR_SIZES[value_type], what))[0]
        return bool(value) if value_type == _V.BOOL else value

    def string(self, what: str) -> str:
        length = self.u64(f"the length of {what}")
        if length > MAX_STRING_BYTES:
            raise self.bad(f"{what} is a string of {length} bytes (at most {MAX_STRING_BYTES})")
        return self.take(length, what).decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        length = self.u64(f"the length of {what}")
        if length > MAX_STRING_BYTES:
            raise self.bad(f"{what} is a string of {length} bytes (at most {MAX_STRING_BYTES})")
        self.skip(length, what)


def check_gguf_layout(stream: BinaryIO, path: Path) -> None:
    """Refuse (GGUFLayoutError naming `path`) a GGUF whose header does not fit its file.

    Walks the header, every key/value and every tensor info, and checks that each tensor's data lies
    inside the file. TruncatedGGUFError means the file ends too early.
    """
    cursor, tensor_count, _ = _walk_metadata(stream, path, lambda key: False)
    _tensor_infos(cursor, tensor_count)


def read_metadata(path: Path, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """The metadata values whose keys `wanted` accepts: numbers, strings, and arrays of numbers.

    Everything else is skipped unread, so a model's dimensions come back in milliseconds.
    """
    with path.open("rb") as stream:
        # A model's tokenizer arrays run to hundreds of thousands of items: skipping them costs no
        # memory, so they have a cap of their own, far above the arrays read.
        return _walk_metadata(stream, path, wanted, max_skipped_items=MAX_MODEL_ARRAY_ITEMS)[2]


def read_tensor_sizes(path: Path, wanted: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, tuple[int, list[int]]]]:
    """The wanted metadata, and each tensor's data size in bytes and dimensions (a memory estimate's input).

    Every tensor's data must lie inside the file, so no size comes from a header that claims more than it holds.
    """
    with path.open("rb") as stream:
        cursor, tensor_count, values = _walk_metadata(stream, path, wanted, max_skipped_items=MAX_MODEL_ARRAY_ITEMS)
        return values, {name: (n_bytes, dims) for name, _, n_bytes, dims in _tensor_infos(cursor, tensor_count)}


def _walk_metadata(stream: BinaryIO, path: Path, wanted: Callable[[str], bool],
                   max_skipped_items: int = MAX_ARRAY_ITEMS) -> tuple[_Cursor, int, dict[str, Any]]:
    """The header up to the tensor infos: the cursor after the metadata, the tensor count, the wanted values."""
    stream.seek(0)
    cursor = _Cursor(stream, path)
    cursor.max_skipped_items = max_skipped_items
    magic = stream.read(4)
    stream.seek(0)
    if magic != b"GGUF"[: len(magic)]:
        raise GGUFLayoutError(f"{path}: not a GGUF file (no GGUF magic)")
    cursor.take(4, "the GGUF magic")
    version = cursor.u32("the GGUF version")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order, as GGUFReader reads it
        cursor.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in gguf.READER_SUPPORTED_VERSIONS:
        raise cursor.bad(f"GGUF version {version} is not supported")
    tensor_count = cursor.u64("the tensor count")
    kv_count = cursor.u64("the key/value count")
    if kv_count > MAX_KV:
        raise cursor.bad(f"it claims {kv_count} metadata keys (at most {MAX_KV})")
    if tensor_count > MAX_TENSORS:
        raise cursor.bad(f"it claims {tensor_count} tensors (at most {MAX_TENSORS})")
    left = cursor.size - cursor.pos
    if kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > left:
        raise cursor.truncated(f"it claims {kv_count} metadata keys and {tensor_count} tensors, which take at least "
                         f"{_MIN_KV_BYTES} and {_MIN_TENSOR_INFO_BYTES} bytes each; the file has {left} bytes left")
    values: dict[str, Any] = {}
    for index in range(kv_count):
        key = cursor.name(f"metadata key {index}")
        value_type = cursor.u32(f"the type of {key!r}")
        if key == gguf.Keys.General.ALIGNMENT and value_type == _V.UINT32:
            cursor.alignment = values[key] = cursor.u32(key)
            if cursor.alignment == 0 or cursor.alignment & (cursor.alignment - 1):
                raise cursor.bad(f"{key} is {cursor.alignment}, not a power of two")
        elif wanted(key) and value_type in (*_SCALAR_SIZES, _V.STRING, _V.ARRAY):
            value = _read_value(cursor, key, value_type)
            if value is not _SKIPPED:
                values[key] = value
        else:
            _skip_value(cursor, key, value_type)
    return cursor, tensor_count, values


def _read_value(cursor: _Cursor, key: str, value_type: int) -> Any:
    if value_type == _V.STRING:
        return cursor.string(f"the value of {key!r}")
    if value_type in _SCALAR_SIZES:
        return cursor.scalar(_V(value_type), f"the value of {key!r}")
    item_type = cursor.u32(f"the item type of {key!r}")
    count = cursor.u64(f"the length of {key!r}")
    cursor.read_items += count
    if cursor.read_items > MAX_ARRAY_ITEMS:
        raise cursor.bad(f"{key!r} is an array of {count} items (at most {MAX_ARRAY_ITEMS} in all arrays)")
    if item_type not in _SCALAR_SIZES:  # strings (a vocabulary), or nested: skipped as the layout walk does
        cursor.read_items -= count
        cursor.array_items += count
        if cursor.array_items > cursor.max_skipped_items:
            raise cursor.bad(f"{key!r} is an array of {count} items (at most {cursor.max_skipped_items} in all arrays)")
        if item_type != _V.STRING:
            raise cursor.bad(f"{key!r} is an array of value type {item_type}, which GGUF metadata cannot hold")
        cursor.fits(count, _MIN_STRING_BYTES, repr(key))
        for index in range(count):
            cursor.skip_string(f"{key}[{index}]")
        return _SKIPPED
    cursor.fits(count, _SCALAR_SIZES[_V(item_type)], repr(key))
    return [cursor.scalar(_V(item_type), f"{key}[{i}]") for i in range(count)]


def _skip_value(cursor: _Cursor, key: str, value_type: int) -> None:
    if value_type == _V.STRING:
        cursor.skip_string(f"the value of {key!r}")
    elif value_type in _SCALAR_SIZES:
        cursor.skip(_SCALAR_SIZES[_V(value_type)], f"the value of {key!r}")
    elif value_type == _V.ARRAY:
        item_type = cursor.u32(f"the item type of {key!r}")
        count = cursor.u64(f"the length of {key!r}")
        cursor.array_items += count
        if cursor.array_items > cursor.max_skipped_items:
            raise cursor.bad(f"{key!r} is an array of {count} items (at most {cursor.max_skipped_items} in all arrays)")
        if item_type == _V.STRING:
            cursor.fits(count, _MIN_STRING_BYTES, repr(key))
            for index in range(count):
                cursor.skip_string(f"{key}[{index}]")
        elif item_type in _SCALAR_SIZES:
            cursor.skip(count * _SCALAR_SIZES[_V(item_type)], f"the {count} items of {key!r}")
        else:
            raise cursor.bad(f"{key!r} is an array of value type {item_type}, which GGUF metadata cannot hold")
    else:
        raise cursor.bad(f"{key!r} has unknown value type {value_type}")


def _tensor_infos(cursor: _Cursor, count: int) -> list[tuple[str, int, int, list[int]]]:
    """Every tensor's name, data offset, data size and dimensions, each one's data checked to lie inside the file."""
    tensors = [_tensor_info(cursor, index) for index in range(count)]
    data_start = -(-cursor.pos // cursor.alignment) * cursor.alignment
    for name, offset, n_bytes, _ in tensors:
        if offset % cursor.alignment:
            raise cursor.bad(f"tensor {name!r} starts at {offset}, not a multiple of the alignment {cursor.alignment}")
        end = data_start + offset + n_bytes
        if end > cursor.size:
            raise cursor.truncated(f"the data of tensor {name!r} ends at byte {end}, the file has {cursor.size}")
    return tensors


def _tensor_info(cursor: _Cursor, index: int) -> tuple[str, int, int, list[int]]:
    """Name, data offset, data size in bytes and dimensions of one tensor."""
    name = cursor.name(f"the name of tensor {index}")
    n_dims = cursor.u32(f"the dimension count of tensor {name!r}")
    if n_dims > MAX_DIMS:
        raise cursor.bad(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    dims = [cursor.u64(f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
    raw_type = cursor.u32(f"the type of tensor {name!r}")
    offset = cursor.u64(f"the data offset of tensor {name!r}")
    try:
        block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(raw_type)]
    except (ValueError, KeyError):
        raise cursor.bad(f"tensor {name!r} has unknown type {raw_type}") from None
    n_elements = 1
    for dim in dims:
        n_elements *= dim
    if n_elements > _INT64_MAX or (dims and dims[0] % block_size):
        raise cursor.bad(f"tensor {name!r} has impossible dimensions {dims} for its type")
    return name, offset, n_elements // block_size * type_size, dims
