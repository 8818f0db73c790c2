"""Hugging Face PEFT LoRA directories: validation and conversion to llama.cpp GGUF LoRA adapters."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import gguf
import numpy as np
from safetensors import SafetensorError, deserialize, safe_open

from ..engine.base_info import BaseModelInfo
from ..errors import AdapterError
from .peft_patterns import PatternKeys
from .regular_files import open_regular, read_regular

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
# PEFT writes a few KB; the cap keeps a hostile file from being read whole into memory.
MAX_CONFIG_BYTES = 1 << 20

_PARAM = "adapter"
_HF_PREFIX = "base_model.model."
_LORA_TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<kind>[AB])(?:\.weight)?")
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
_EMBEDDING_MODULES = ("embed_tokens", "lm_head")

_T = gguf.MODEL_TENSOR
_SUPPORTED_TENSORS = (_T.ATTN_Q, _T.ATTN_K, _T.ATTN_V, _T.ATTN_OUT, _T.FFN_GATE, _T.FFN_UP, _T.FFN_DOWN)

# Architectures whose HF q/k projections llama.cpp's converter row-permutes (LlamaModel.permute and its
# copies, convert_hf_to_gguf in the llama.cpp vendored by llama-cpp-python 0.3.36): HF checkpoints use
# rotate-half RoPE, these llama.cpp graphs use interleaved RoPE, so a LoRA's lora_B must be permuted the
# same way as the base weights. Not here on purpose: llama4, apertus, afmoe (their converters skip it)
# and fused-qkv models (internlm2, bailingmoe, granite switch), whose q_proj/k_proj names do not map.
_ROPE_PERMUTED_ARCHS = frozenset({
    "llama", "llama-embed", "arcee", "smollm3", "nanbeige", "cogvlm", "mistral3",
    "granite", "granite_swa", "granitemoe", "granitehybrid",
    "arctic", "chameleon", "deci", "deepseek", "llada", "minicpm", "olmo",
})

# safetensors dtype -> numpy dtype; bfloat16 has no numpy dtype and is widened by hand.
_FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def _refuse(path: Path, reason: str) -> NoReturn:
    raise AdapterError(f"{path}: {reason}", param=_PARAM)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class LoraModule:
    """One adapted matrix: where its A/B live in the safetensors file and how they become GGUF tensors."""

    hf_name: str
    gguf_name: str
    tensor_a: str
    tensor_b: str
    rank: int
    b_scale: float
    permute_heads: int | None


@dataclass(frozen=True)
class PeftAdapter:
    """A validated PEFT LoRA directory, ready to convert."""

    path: Path
    weights_path: Path
    alpha: float
    modules: tuple[LoraModule, ...]


@dataclass(frozen=True)
class _LoraConfig:
    r: int
    alpha: float
    use_rslora: bool
    rank_pattern: PatternKeys
    alpha_pattern: PatternKeys

    def rank_and_alpha(self, modules: list[str]) -> dict[str, tuple[int, float]]:
        """PEFT's r and alpha for each module: the value of the first pattern key that matches it, else the default."""
        ranks, alphas = self.rank_pattern.values(modules), self.alpha_pattern.values(modules)
        return {m: (int(ranks.get(m, self.r)), float(alphas.get(m, self.alpha))) for m in modules}

    def scale(self, r: int, alpha: float) -> float:
        return alpha / (math.sqrt(r) if self.use_rslora else r)


def is_peft_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def read_config_json(path: Path) -> Any:
    """The parsed adapter_config.json. AdapterError when it is not a regular file, too large or nested
    too deeply; OSError and ValueError (not JSON, perhaps not yet) pass through."""
    data = read_regular(path, MAX_CONFIG_BYTES, param=_PARAM)
    try:
        return json.loads(data)
    except RecursionError:  # json's decoder recurses once per nested [ or {
        _refuse(path, "is nested too deeply to be an adapter config")


def _read_config(peft_dir: Path) -> _LoraConfig:
    path = peft_dir / CONFIG_NAME
    try:
        config = read_config_json(path)
    except FileNotFoundError:
        _refuse(path, "is missing: not a PEFT adapter directory")
    except OSError as exc:
        _refuse(path, f"cannot be read ({exc.strerror})")
    except ValueError as exc:
        _refuse(path, f"is not valid JSON ({exc})")
    if not isinstance(config, dict):
        _refuse(path, "does not hold a JSON object")
    _check_config_features(path, config)
    return _typed_config(path, config)


def _check_config_features(path: Path, config: dict[str, Any]) -> None:
    """Refuse what a llama.cpp LoRA adapter cannot express; converting anyway would serve a different model."""
    if config.get("peft_type") != "LORA":
        _refuse(path, f"peft_type is {config.get('peft_type')!r}; only LORA adapters can be converted")
    if config.get("use_dora"):
        _refuse(path, "uses DoRA (use_dora: true), which llama.cpp adapters cannot apply")
    if config.get("modules_to_save"):
        _refuse(path, f"sets modules_to_save {config['modules_to_save']!r}: fully retrained layers cannot "
                      "be carried by a LoRA adapter")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        _refuse(path, f"trains biases (bias: {config.get('bias')!r}), which llama.cpp LoRA adapters cannot hold")
    if config.get("alora_invocation_tokens"):
        _refuse(path, "is an activated LoRA (alora_invocation_tokens), which this converter does not support")
    targets = config.get("target_modules")
    if isinstance(targets, list) and any(str(t).split(".")[-1] in _EMBEDDING_MODULES for t in targets):
        _refuse(path, f"adapts embeddings or lm_head (target_modules {targets!r}), which is not supported")


def _typed_config(path: Path, config: dict[str, Any]) -> _LoraConfig:
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if not _is_number(r) or r != int(r) or r <= 0:
        _refuse(path, f"r must be a positive integer, not {r!r}")
    # llama.cpp reads adapter.lora.alpha == 0 as "no scaling", so a zero alpha cannot be written faithfully.
    if not _is_number(alpha) or alpha == 0:
        _refuse(path, f"lora_alpha must be a finite non-zero number, not {alpha!r}")
    patterns: dict[str, PatternKeys] = {}
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field) or {}
        if not isinstance(pattern, dict):
            _refuse(path, f"{field} must be an object")
        for key, value in pattern.items():
            kind = "positive integer" if field == "rank_pattern" else "number"
            if not _is_number(value) or (field == "rank_pattern" and (value != int(value) or value <= 0)):
                _refuse(path, f"{field}[{key!r}] must be a {kind}, not {value!r}")
        patterns[field] = PatternKeys(path, field, pattern)
    return _LoraConfig(int(r), float(alpha), bool(config.get("use_rslora")), patterns["rank_pattern"],
                       patterns["alpha_pattern"])


def _weights_path(peft_dir: Path) -> Path:
    path = peft_dir / WEIGHTS_NAME
    if path.is_file():
        return path
    if path.exists():  # safetensors would open a FIFO and wait for a writer forever
        _refuse(path, "is not a regular file; adapters are read from regular files only")
    # Never opened: unpickling a .bin runs arbitrary code from whoever produced the adapter.
    if (peft_dir / PICKLE_WEIGHTS_NAME).exists():
        _refuse(peft_dir / PICKLE_WEIGHTS_NAME, f"is a pickle file, which is never loaded (unpickling runs code); "
                                                f"save the adapter as {WEIGHTS_NAME} (safe_serialization=True)")
    _refuse(path, "is missing")


def _read_headers(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from the safetensors header; no tensor data is read."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}  # noqa: SIM118  (safe_open is not iterable)
            return {name: (s.get_dtype(), tuple(s.get_shape())) for name, s in slices.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        _refuse(path, f"is not a complete safetensors file ({exc})")


def _pair_tensors(path: Path, headers: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, dict[str, str]]:
    """Module name (without PEFT's wrapper prefix) -> {"A": tensor name, "B": tensor name}."""
    pairs: dict[str, dict[str, str]] = {}
    for name in headers:
        match = _LORA_TENSOR.fullmatch(name)
        module = match["module"] if match else name
        if "lora_embedding_" in name or any(part in _EMBEDDING_MODULES for part in module.split(".")):
            _refuse(path, f"adapts embeddings or lm_head (tensor {name!r}), which is not supported")
        if match is None:
            _refuse(path, f"holds tensor {name!r}, which is not a LoRA A/B matrix")
        module = module.removeprefix(_HF_PREFIX)
        pairs.setdefault(module, {})[match["kind"]] = name
    if not pairs:
        _refuse(path, "holds no LoRA tensors")
    for pair in pairs.values():
        for have, want in (("A", "B"), ("B", "A")):
            if want not in pair:
                _refuse(path, f"has {pair[have]!r} without its lora_{want}")
    return pairs


def _map_module(path: Path, module: str, base: BaseModelInfo,
                name_map: gguf.TensorNameMap) -> tuple[gguf.MODEL_TENSOR, str]:
    index = _LAYER_INDEX.search(module)
    if index is not None and int(index[1]) >= base.n_layer:
        _refuse(path, f"adapts {module!r}, layer {index[1]}, but the base has {base.n_layer} layers")
    mapped = name_map.get_type_and_name(module)
    if mapped is None:
        _refuse(path, f"adapts {module!r}, which the base ({base.architecture}) does not have")
    if mapped[0] not in _SUPPORTED_TENSORS:
        _refuse(path, f"adapts {module!r} ({mapped[1]}); only attention q/k/v/o and MLP gate/up/down "
                      "projections are supported")
    return mapped


def _check_shapes(path: Path, module: str, headers: dict[str, tuple[str, tuple[int, ...]]], pair: dict[str, str],
                  dims: tuple[int, int]) -> int:
    """Validate dtypes and shapes against the base; return the module's rank."""
    for name in pair.values():
        dtype, shape = headers[name]
        if dtype not in _FLOAT_DTYPES:
            _refuse(path, f"tensor {name!r} has dtype {dtype}; LoRA weights must be floating point")
        if len(shape) != 2:
            _refuse(path, f"tensor {name!r} has shape {list(shape)}; LoRA matrices are 2-D")
    (rank_a, n_in), (n_out, rank_b) = headers[pair["A"]][1], headers[pair["B"]][1]
    if rank_a != rank_b:
        _refuse(path, f"{module!r}: lora_A rank {rank_a} != lora_B rank {rank_b}")
    if rank_a == 0:
        _refuse(path, f"{module!r} has rank 0")
    if (n_in, n_out) != dims:
        _refuse(path, f"{module!r} maps {n_in} -> {n_out} features but the base expects {dims[0]} -> {dims[1]} "
                      "(shape mismatch: adapter trained for another base model?)")
    return rank_a


def validate_peft_dir(peft_dir: Path, base: BaseModelInfo) -> PeftAdapter:
    config = _read_config(peft_dir)
    config_path = peft_dir / CONFIG_NAME
    arch = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}.get(base.architecture)
    if arch is None:
        _refuse(base.path, f"base architecture {base.architecture!r} is unknown to the gguf package")
    if not base.uniform_layers:
        _refuse(base.path, "base has per-layer head counts or feed-forward sizes, which PEFT conversion "
                           "does not support")
    weights_path = _weights_path(peft_dir)
    headers = _read_headers(weights_path)
    name_map = gguf.get_tensor_name_map(arch, base.n_layer)
    # One alpha per GGUF file, and llama.cpp scales each tensor by alpha / rank(tensor). Writing the
    # config's alpha (times sqrt(r) for rsLoRA) makes that equal PEFT's scale for every module with the
    # default r and alpha; modules that rank_pattern/alpha_pattern change get the ratio of PEFT's scale to
    # llama.cpp's folded into lora_b, so every module's effective scale equals PEFT's exactly.
    file_alpha = config.alpha * (math.sqrt(config.r) if config.use_rslora else 1.0)
    modules: list[LoraModule] = []
    pairs = _pair_tensors(weights_path, headers)
    configured = config.rank_and_alpha(list(pairs))
    for module, pair in pairs.items():
        tensor, gguf_name = _map_module(weights_path, module, base, name_map)
        rank = _check_shapes(weights_path, module, headers, pair, base.module_dims(tensor))
        configured_rank, configured_alpha = configured[module]
        if rank != configured_rank:
            _refuse(config_path, f"gives {module!r} rank {configured_rank} but {WEIGHTS_NAME} holds rank {rank}")
        b_scale = config.scale(configured_rank, configured_alpha) / (file_alpha / rank)
        heads = {_T.ATTN_Q: base.n_head, _T.ATTN_K: base.n_head_kv}.get(tensor)
        permute = heads if heads is not None and base.architecture in _ROPE_PERMUTED_ARCHS else None
        modules.append(LoraModule(module, f"{gguf_name}.weight", pair["A"], pair["B"], rank,
                                  1.0 if math.isclose(b_scale, 1.0, rel_tol=1e-12) else b_scale, permute))
    return PeftAdapter(peft_dir, weights_path, file_alpha, tuple(modules))


def _permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute on rows: rotate-half pairs (i, i + d/2) become adjacent (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _to_float32(dtype: str, shape: list[int], data: bytes) -> np.ndarray:
    raw = np.frombuffer(data, dtype=_FLOAT_DTYPES[dtype])
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return raw.astype(np.float32).reshape(shape)


def _load_tensors(adapter: PeftAdapter) -> dict[str, np.ndarray]:
    # deserialize (not safetensors.numpy) because numpy has no bfloat16, a common adapter dtype.
    try:
        with open_regular(adapter.weights_path, param=_PARAM) as stream:
            entries = dict(deserialize(stream.read()))  # type: ignore[no-untyped-call]  # untyped in safetensors
    except (SafetensorError, OSError) as exc:
        _refuse(adapter.weights_path, f"cannot be read ({exc})")
    tensors: dict[str, np.ndarray] = {}
    for module in adapter.modules:
        for name in (module.tensor_a, module.tensor_b):
            entry = entries.get(name)
            if entry is None or entry["dtype"] not in _FLOAT_DTYPES:
                _refuse(adapter.weights_path, f"changed while being converted (tensor {name!r})")
            tensors[name] = _to_float32(entry["dtype"], entry["shape"], entry["data"])
    return tensors


def convert_peft_to_gguf(peft_dir: Path, base: BaseModelInfo, out_path: Path) -> None:
    adapter = validate_peft_dir(peft_dir, base)
    tensors = _load_tensors(adapter)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_gguf(adapter, base, tensors, tmp)
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
        # Readers never see a half-written adapter: the file appears complete or not at all.
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_gguf(adapter: PeftAdapter, base: BaseModelInfo, tensors: dict[str, np.ndarray], path: Path) -> None:
    writer = gguf.GGUFWriter(path, arch=base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
    for module in adapter.modules:
        lora_b = tensors[module.tensor_b]
        if module.permute_heads is not None:
            lora_b = _permute_rope_rows(lora_b, module.permute_heads)
        if module.b_scale != 1.0:
            lora_b = lora_b * np.float32(module.b_scale)
        # GGUFWriter reverses numpy shapes into ggml's ne order, so (rank, n_in) and (n_out, rank) are
        # exactly what llama.cpp checks lora_a/lora_b against.
        writer.add_tensor(f"{module.gguf_name}.lora_a", np.ascontiguousarray(tensors[module.tensor_a]))
        writer.add_tensor(f"{module.gguf_name}.lora_b", np.ascontiguousarray(lora_b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def peft_content_hash(peft_dir: Path) -> str:
    """sha256 of the config and weights bytes: the identity of what the adapter computes."""
    digest = hashlib.sha256()
    for path in (peft_dir / CONFIG_NAME, _weights_path(peft_dir)):
        try:
            with open_regular(path, param=_PARAM) as stream:
                # Length-prefixed so that bytes cannot move between the two files with the same hash.
                digest.update(os.fstat(stream.fileno()).st_size.to_bytes(8, "little"))
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            _refuse(path, f"cannot be read ({exc.strerror})")
    return digest.hexdigest()
