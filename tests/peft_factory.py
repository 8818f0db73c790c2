"""Writes Hugging Face PEFT LoRA directories with random weights for a base model, for tests."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nomoat.engine.base_info import BaseModelInfo

# PEFT's short module names and where they sit inside a llama-style decoder layer.
MODULE_PATHS: dict[str, str] = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
ALL_MODULES: tuple[str, ...] = tuple(MODULE_PATHS)
PREFIX = "base_model.model."
Dtype = Literal["F32", "F16", "BF16"]


def module_dims(base: BaseModelInfo, module: str) -> tuple[int, int]:
    """(n_in, n_out) of a module in `base`, spelled out independently of server.peft."""
    q_out = base.n_head * base.head_dim_k
    kv_out = base.n_head_kv * base.head_dim_k
    return {
        "q_proj": (base.n_embd, q_out),
        "k_proj": (base.n_embd, kv_out),
        "v_proj": (base.n_embd, base.n_head_kv * base.head_dim_v),
        "o_proj": (base.n_head * base.head_dim_v, base.n_embd),
        "gate_proj": (base.n_embd, base.n_ff),
        "up_proj": (base.n_embd, base.n_ff),
        "down_proj": (base.n_ff, base.n_embd),
    }[module]


def layer_module_name(layer: int, module: str) -> str:
    """The module path PEFT matches patterns against, e.g. model.layers.3.self_attn.q_proj."""
    return f"model.layers.{layer}.{MODULE_PATHS.get(module, module)}"


def _pattern_lookup(pattern: Mapping[str, Any], name: str, default: Any) -> Any:
    # PEFT: the first key (in insertion order) that matches the whole name or a dotted suffix of it.
    for key in pattern:
        if re.fullmatch(rf"(?:.*\.)?(?:{key})", name):
            return pattern[key]
    return default


@dataclass
class WrittenAdapter:
    """A PEFT directory on disk and the float32 values of every matrix in it (as stored)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.path / "adapter_config.json"

    @property
    def weights_path(self) -> Path:
        return self.path / "adapter_model.safetensors"

    def lora(self, layer: int, module: str) -> tuple[np.ndarray, np.ndarray]:
        """(lora_A, lora_B) of one module, shaped (r, n_in) and (n_out, r)."""
        stem = PREFIX + layer_module_name(layer, module)
        return self.tensors[f"{stem}.lora_A.weight"], self.tensors[f"{stem}.lora_B.weight"]

    def rewrite_weights(self, dtype: Dtype = "F32") -> None:
        """Write self.tensors back to disk, e.g. after a test edited or removed some."""
        _save(self.weights_path, self.tensors, dtype)


def _stored(values: np.ndarray, dtype: Dtype) -> tuple[np.ndarray, bytes]:
    """The float32 values a file of `dtype` holds for `values`, and their bytes on disk."""
    if dtype == "BF16":
        bits = (values.astype("<f4").view("<u4") >> 16).astype("<u2")
        return (bits.astype(np.uint32) << 16).view(np.float32), bits.tobytes()
    on_disk = values.astype("<f2" if dtype == "F16" else "<f4")
    return on_disk.astype(np.float32), on_disk.tobytes()


def _save(path: Path, tensors: Mapping[str, np.ndarray], dtype: Dtype) -> None:
    """Write the safetensors layout by hand (8-byte header length, JSON header, data) so any dtype fits."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks: list[bytes] = []
    offset = 0
    for name, values in tensors.items():
        entry_dtype = "I32" if values.dtype == np.int32 else dtype
        raw = values.astype("<i4").tobytes() if entry_dtype == "I32" else _stored(values, dtype)[1]
        header[name] = {"dtype": entry_dtype, "shape": list(values.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def write_peft_adapter(
    directory: Path,
    base: BaseModelInfo,
    *,
    modules: Iterable[str] = ALL_MODULES,
    layers: Iterable[int] | None = None,
    r: int = 8,
    lora_alpha: float = 16.0,
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    use_dora: bool = False,
    bias: str = "none",
    modules_to_save: list[str] | None = None,
    extra_target_modules: Iterable[str] = (),
    dtype: Dtype = "F32",
    seed: int = 0,
    config_overrides: Mapping[str, Any] | None = None,
) -> WrittenAdapter:
    """Write adapter_config.json and adapter_model.safetensors as PEFT's save_pretrained would.

    Every module in `modules` gets lora_A (r_m, n_in) and lora_B (n_out, r_m) on every layer in `layers`
    (all by default), r_m from rank_pattern with PEFT's matching. `extra_target_modules` adds tensors the
    base cannot take: "embed_tokens" (lora_embedding_A/B), "lm_head", or any other name as a per-layer
    module of width n_embd. use_dora adds lora_magnitude_vector tensors; modules_to_save adds full copies.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    modules, extra = list(modules), list(extra_target_modules)
    layer_ids = list(range(base.n_layer) if layers is None else layers)
    rank_pattern, alpha_pattern = dict(rank_pattern or {}), dict(alpha_pattern or {})

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    raw: dict[str, np.ndarray] = {}
    for layer in layer_ids:
        for module in modules + [m for m in extra if m not in ("embed_tokens", "lm_head")]:
            name = layer_module_name(layer, module)
            rank = _pattern_lookup(rank_pattern, name, r)
            n_in, n_out = module_dims(base, module) if module in MODULE_PATHS else (base.n_embd, base.n_embd)
            raw[f"{PREFIX}{name}.lora_A.weight"] = matrix(rank, n_in)
            raw[f"{PREFIX}{name}.lora_B.weight"] = matrix(n_out, rank)
            if use_dora:
                raw[f"{PREFIX}{name}.lora_magnitude_vector"] = matrix(1, n_out)[0]
    if "embed_tokens" in extra:
        raw[f"{PREFIX}model.embed_tokens.lora_embedding_A"] = matrix(r, 64)
        raw[f"{PREFIX}model.embed_tokens.lora_embedding_B"] = matrix(base.n_embd, r)
    if "lm_head" in extra:
        raw[f"{PREFIX}lm_head.lora_A.weight"] = matrix(r, base.n_embd)
        raw[f"{PREFIX}lm_head.lora_B.weight"] = matrix(64, r)
    for saved in modules_to_save or []:
        raw[f"{PREFIX}{saved}.weight"] = matrix(64, base.n_embd)

    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(set(modules) | set(extra)),
        "use_rslora": use_rslora,
        "use_dora": use_dora,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "modules_to_save": modules_to_save,
        "bias": bias,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    config.update(config_overrides or {})
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    written = WrittenAdapter(directory, config, {name: _stored(v, dtype)[0] for name, v in raw.items()})
    _save(written.weights_path, raw, dtype)
    return written
