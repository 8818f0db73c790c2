"""Adapter files: checking a GGUF adapter against its base, hashing, PEFT intake, and path confinement."""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import gguf

from ..engine.base_info import BaseModelInfo
from ..errors import AdapterError, InvalidRequestError, PermissionDeniedError
from .gguf_check import check_gguf_layout
from .peft import convert_peft_to_gguf, is_peft_dir, peft_content_hash
from .regular_files import open_regular

_LORA_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.weight\.lora_([ab])$")
_T = gguf.MODEL_TENSOR
_CHECKED = {
    "attn_q": _T.ATTN_Q, "attn_k": _T.ATTN_K, "attn_v": _T.ATTN_V, "attn_output": _T.ATTN_OUT,
    "ffn_gate": _T.FFN_GATE, "ffn_up": _T.FFN_UP, "ffn_down": _T.FFN_DOWN,
}
# Bumped whenever the PEFT conversion changes, so cached conversions are redone.
CONVERTER_VERSION = "1"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    return None if f is None else f.contents()


def check_adapter_gguf(path: Path, base: BaseModelInfo) -> None:
    """Refuse, before llama.cpp opens it, a file that is not a LoRA GGUF for this base."""
    try:
        with open_regular(path) as stream:
            check_gguf_layout(stream, path)  # GGUFReader trusts the header's counts: never hand it a lie
            # numpy maps the open file: the file checked is the file read.
            reader = gguf.GGUFReader(stream, "r")  # type: ignore[arg-type]
    except OSError as exc:
        raise AdapterError(f"{path}: cannot be read ({exc.strerror or exc})", param="path") from None
    except AdapterError:
        raise
    except Exception as exc:  # GGUFReader raises ValueError, KeyError, struct errors on damage
        raise AdapterError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})", param="path") from None
    if _field(reader, gguf.Keys.General.TYPE) != "adapter" or _field(reader, gguf.Keys.Adapter.TYPE) != "lora":
        raise AdapterError(f"{path}: not a LoRA adapter (general.type must be 'adapter', adapter.type 'lora')",
                           param="path")
    arch = _field(reader, gguf.Keys.General.ARCHITECTURE)
    if arch != base.architecture:
        raise AdapterError(f"{path}: adapter is for architecture {arch!r}, the base model is {base.architecture!r}",
                           param="path")
    alpha = _field(reader, gguf.Keys.Adapter.LORA_ALPHA)
    if alpha is not None and (isinstance(alpha, (str, list)) or not math.isfinite(alpha)):
        # llama.cpp would scale every tensor by alpha / rank: NaN or inf poisons every answer.
        raise AdapterError(f"{path}: {gguf.Keys.Adapter.LORA_ALPHA} is {alpha!r}, not a finite number", param="path")
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


def _check_inside(real: Path, root: Path, path: str) -> None:
    if not real.exists():
        raise InvalidRequestError(f"no adapter at {path!r} in the adapter directories", param="path",
                                  code="adapter_not_found")
    if real.is_dir():
        # A PEFT directory's files are opened too: none may lead out of the adapter directory.
        for inner in real.iterdir():
            if root not in Path(os.path.realpath(inner)).parents:
                raise PermissionDeniedError(
                    f"{path!r} holds {inner.name!r}, which leads outside the adapter directories", param="path",
                )


def confine(path: str, adapter_dirs: list[Path]) -> Path:
    """The real path of `path` if it lies inside one of `adapter_dirs`, else a 403.

    Relative paths are taken relative to each directory in turn. Symlinks are resolved before
    the check, so a link that points outside is refused; nothing is opened here.
    """
    if not adapter_dirs:
        raise PermissionDeniedError(
            "runtime adapter loading is off: no adapter directory is configured (--adapter-dir)", param="path"
        )
    if "\x00" in path:
        raise InvalidRequestError("path contains a NUL byte", param="path")
    # Taken literally: `~` is a file name here, never a home directory (none may exist, or be allowed).
    candidate = Path(path)
    for directory in adapter_dirs:
        root = Path(os.path.realpath(directory))
        real = Path(os.path.realpath(candidate if candidate.is_absolute() else root / candidate))
        if root in real.parents:
            try:
                _check_inside(real, root, path)
            except OSError as exc:  # a name too long, a directory it may not read...
                raise InvalidRequestError(f"{path!r} cannot be read: {exc.strerror or exc}", param="path",
                                          code="adapter_not_found") from None
            return real
    raise PermissionDeniedError(f"{path!r} is outside the adapter directories", param="path")
