"""A model's dimensions from its GGUF metadata, each value checked for type and range before anything uses it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from .errors import ModelFileError
from .gguf_header import GGUFLayoutError, read_tensor_sizes

# llama.cpp holds per-layer values in arrays of LLAMA_MAX_LAYERS (512) and refuses more; this bound is looser, so
# llama.cpp keeps the last word, and is what keeps a per-layer list built from a header small.
MAX_LAYERS = 4096
MAX_HEADS = 1 << 16
# Embedding, feed-forward and head widths: the largest models are near 2**16; 2**20 leaves room and keeps every
# product of these within what an estimate may sum.
MAX_WIDTH = 1 << 20
MAX_CONTEXT = (1 << 32) - 1  # llama.cpp reads context_length as a uint32

_K = gguf.Keys


@dataclass(frozen=True)
class ModelDims:
    """What a memory estimate and an adapter check read of a model; None (or ()) where the header is silent.

    Per-layer values have one entry per layer whether the file stores one number or one per layer.
    """

    architecture: str
    n_layer: int | None
    n_embd: int | None
    n_ff: tuple[int, ...]
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    key_length: int | None
    value_length: int | None
    context_length: int | None


def model_dims(path: Path, values: Mapping[str, Any], n_tensors: int | None = None) -> ModelDims:
    """The dimensions in `values` (metadata read from `path`); ModelFileError naming the key and its bound when a
    value is not an integer of a sane range, or a per-layer array's length is not the layer count.

    `n_tensors` (the file's, or a split model's in all) bounds the layer count too: every layer has a tensor.
    """
    arch = values.get(_K.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{path}: not a GGUF model (no {_K.General.ARCHITECTURE})")
    layers_bound, why = MAX_LAYERS, None
    if n_tensors is not None and n_tensors < MAX_LAYERS:
        layers_bound, why = n_tensors, f"each layer has tensors, and the model holds {n_tensors}"
    reader = _Reader(path, arch, values)
    n_layer = reader.count(_K.LLM.BLOCK_COUNT, layers_bound, why)
    return ModelDims(
        architecture=arch,
        n_layer=n_layer,
        n_embd=reader.count(_K.LLM.EMBEDDING_LENGTH, MAX_WIDTH),
        n_ff=reader.per_layer(_K.LLM.FEED_FORWARD_LENGTH, MAX_WIDTH, n_layer),
        n_head=reader.per_layer(_K.Attention.HEAD_COUNT, MAX_HEADS, n_layer),
        n_head_kv=reader.per_layer(_K.Attention.HEAD_COUNT_KV, MAX_HEADS, n_layer),
        key_length=reader.count(_K.Attention.KEY_LENGTH, MAX_WIDTH),
        value_length=reader.count(_K.Attention.VALUE_LENGTH, MAX_WIDTH),
        context_length=reader.count(_K.LLM.CONTEXT_LENGTH, MAX_CONTEXT),
    )


def split_tensor_count(path: Path, values: Mapping[str, Any], own: int) -> int:
    """The tensors of the whole model: a split model's first file names the count of all its parts (gguf-split)."""
    if values.get(_K.Split.LLM_KV_SPLIT_COUNT, 1) in (0, 1):
        return own
    total = values.get(_K.Split.LLM_KV_SPLIT_TENSORS_COUNT)
    return _integer(path, _K.Split.LLM_KV_SPLIT_TENSORS_COUNT, total, 1 << 32) if total is not None else MAX_LAYERS


class _Reader:
    def __init__(self, path: Path, arch: str, values: Mapping[str, Any]) -> None:
        self._path, self._arch, self._values = path, arch, values

    def count(self, key: str, bound: int, why: str | None = None) -> int | None:
        key = key.format(arch=self._arch)
        value = self._values.get(key)
        return None if value is None else _integer(self._path, key, value, bound, why)

    def per_layer(self, key: str, bound: int, n_layer: int | None) -> tuple[int, ...]:
        key = key.format(arch=self._arch)
        value = self._values.get(key)
        if value is None:
            return ()
        if isinstance(value, list):
            if len(value) != (n_layer or 0):
                raise ModelFileError(f"{self._path}: {key} holds {len(value)} values, one per layer, but "
                                     f"{_K.LLM.BLOCK_COUNT.format(arch=self._arch)} is {n_layer}")
            return tuple(_integer(self._path, f"{key}[{i}]", v, bound) for i, v in enumerate(value))
        return (_integer(self._path, key, value, bound),) * (n_layer or 0)


def _integer(path: Path, key: str, value: Any, bound: int, why: str | None = None) -> int:
    # GGUF's bool and float types arrive as Python bool and float: neither is a count (NaN least of all).
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFileError(f"{path}: {key} is {value!r}, not an integer")
    if not 0 <= value <= bound:
        raise ModelFileError(f"{path}: {key} is {value}, outside 0..{bound}" + (f" ({why})" if why else ""))
    return value


def model_keys(key: str) -> bool:
    """The metadata a model's dimensions need: all but the tokenizer's (its vocabulary runs to 100k+ items)."""
    return not key.startswith("tokenizer.")


def check_model_file(path: Path) -> ModelDims:
    """Walk `path`'s header (bounded by the file) and check its dimensions: ModelFileError naming what is wrong.

    What a downloaded file passes before it is registered as a model.
    """
    try:
        values, tensors = read_tensor_sizes(path, model_keys)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except GGUFLayoutError as exc:
        raise ModelFileError(str(exc)) from None
    return model_dims(path, values, split_tensor_count(path, values, len(tensors)))
