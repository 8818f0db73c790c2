"""LoRA adapters on a loaded model: checking a GGUF adapter against its base, hashing, loading, PEFT intake."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from ..errors import AdapterError
from ..peft import BaseModelInfo, convert_peft_to_gguf, is_peft_dir, peft_content_hash

_LORA_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")
_T = gguf.MODEL_TENSOR
_CHECKED = {
    "attn_q": _T.ATTN_Q, "attn_k": _T.ATTN_K, "attn_v": _T.ATTN_V, "attn_output": _T.ATTN_OUT,
    "ffn_gate": _T.FFN_GATE, "ffn_up": _T.FFN_UP, "ffn_down": _T.FFN_DOWN,
}
# Bumped whenever the PEFT conversion changes, so cached conversions are redone.
CONVERTER_VERSION = "1"


@dataclass(eq=False)
class LoraAdapter:
    """One adapter file loaded on one base model. `ptr` is llama.cpp's `llama_adapter_lora *`."""

    name: str
    source: Path  # what the user named: a GGUF file or a PEFT directory
    gguf_path: Path  # what llama.cpp loaded
    content_hash: str
    ptr: Any = field(default=None, repr=False)
    unloading: bool = False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


def check_adapter_gguf(path: Path, base: BaseModelInfo) -> None:
    """Refuse, before llama.cpp opens it, a file that is not a LoRA GGUF for this base."""
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # GGUFReader raises ValueError, IndexError, struct errors on damage
        raise AdapterError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})", param="path") from None
    if _field(reader, gguf.Keys.General.TYPE) != "adapter" or _field(reader, gguf.Keys.Adapter.TYPE) != "lora":
        raise AdapterError(f"{path}: not a LoRA adapter (general.type must be 'adapter', adapter.type 'lora')",
                           param="path")
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != base.architecture:
        raise AdapterError(f"{path}: adapter is for architecture {arch!r}, the base model is {base.architecture!r}",
                           param="path")
    shapes: dict[str, dict[str, list[int]]] = {}
    for tensor in reader.tensors:
        match = _LORA_NAME.match(tensor.name)
        if match is None:
            continue
        layer, module, kind = int(match[1]), match[2], match[3]
        if layer >= base.n_layer:
            raise AdapterError(f"{path}: tensor {tensor.name} names block {layer}; the base has {base.n_layer}",
                               param="path")
        shapes.setdefault(f"blk.{layer}.{module}", {})[kind] = [int(x) for x in tensor.shape]
    if not shapes:
        raise AdapterError(f"{path}: the adapter holds no LoRA tensors", param="path")
    for name, pair in shapes.items():
        if set(pair) != {"a", "b"}:
            raise AdapterError(f"{path}: {name} has lora_{next(iter(pair))} without its partner", param="path")
        module = _CHECKED.get(name.split(".")[2])
        if module is None or not base.uniform_layers:
            continue  # llama.cpp checks these itself on load
        n_in, n_out = base.module_dims(module)
        # GGUF shapes are in ggml order: lora_a is [n_in, rank], lora_b is [rank, n_out].
        (a_in, rank_a), (rank_b, b_out) = pair["a"], pair["b"]
        if a_in != n_in or b_out != n_out or rank_a != rank_b:
            raise AdapterError(
                f"{path}: {name} has shapes lora_a {pair['a']} and lora_b {pair['b']}; the base needs "
                f"[{n_in}, r] and [r, {n_out}]",
                param="path",
            )


def prepare_adapter(source: Path, base: BaseModelInfo, cache_dir: Path) -> tuple[Path, str]:
    """The GGUF file to load for `source` and its content hash; PEFT directories are converted once.

    A conversion is cached under `cache_dir` keyed by the PEFT content hash, the base file and
    the converter version, so a restart or reload loads it without converting again.
    """
    if source.is_dir():
        if not is_peft_dir(source):
            raise AdapterError(f"{source}: a directory must hold a PEFT adapter (adapter_config.json)", param="path")
        peft_hash = peft_content_hash(source)
        key = hashlib.sha256(f"{peft_hash}:{base.path.resolve()}:{CONVERTER_VERSION}".encode()).hexdigest()[:32]
        out = cache_dir / f"{key}.gguf"
        if not out.is_file():
            convert_peft_to_gguf(source, base, out)
        check_adapter_gguf(out, base)
        return out, file_sha256(out)
    try:
        digest = file_sha256(source)
    except OSError as exc:
        raise AdapterError(f"{source}: cannot be read ({exc.strerror})", param="path") from None
    check_adapter_gguf(source, base)
    return source, digest
