"""KV cache element types (llama.cpp's -ctk/-ctv): their ggml ids, their size per token, and the context settings they need."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp

from .base_info import BaseModelInfo

# Cache type names as llama.cpp's -ctk/-ctv spell them -> (ggml type id, bytes per block, elements per block).
KV_TYPES: dict[str, tuple[int, int, int]] = {
    "f16": (llama_cpp.GGML_TYPE_F16, 2, 1),
    "q8_0": (llama_cpp.GGML_TYPE_Q8_0, 34, 32),  # 32 int8 + one f16 scale
    "q4_0": (llama_cpp.GGML_TYPE_Q4_0, 18, 32),  # 32 nibbles + one f16 scale
}

FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def is_quantized(type_name: str) -> bool:
    return KV_TYPES[type_name][2] > 1


def row_bytes(type_name: str, n_elements: int) -> int:
    """Bytes one row of `n_elements` takes in this type (a quantised row is whole blocks)."""
    _, block_bytes, block_elements = KV_TYPES[type_name]
    return -(-n_elements // block_elements) * block_bytes


def kv_bytes_per_token(model_meta: BaseModelInfo, type_k: str = "f16", type_v: str = "f16") -> int:
    """KV cache bytes one token of one sequence takes: every layer's K and V rows over the KV heads."""
    k = row_bytes(type_k, model_meta.n_head_kv * model_meta.head_dim_k)
    v = row_bytes(type_v, model_meta.n_head_kv * model_meta.head_dim_v)
    return model_meta.n_layer * (k + v)


@dataclass(frozen=True)
class KVCacheTypes:
    """A model's K and V cache types and the flash attention setting its contexts are created with."""

    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "auto"

    def problem(self, model_meta: BaseModelInfo) -> str | None:
        """Why llama.cpp would refuse these settings for this model, or None.

        llama.cpp computes attention over a quantised V cache only inside flash attention, and
        quantises rows in blocks of 32, so each head's K/V row must be whole blocks.
        """
        if is_quantized(self.type_v) and self.flash_attn == "off":
            return f"cache_type_v = {self.type_v!r} needs flash attention; set flash_attn = 'auto' or 'on'"
        for name, kind, dim in (("cache_type_k", self.type_k, model_meta.head_dim_k),
                                ("cache_type_v", self.type_v, model_meta.head_dim_v)):
            block = KV_TYPES[kind][2]
            if dim % block:
                return f"{name} = {kind!r} needs a head size divisible by {block}; this model's is {dim}"
        return None

    def apply(self, cparams: llama_cpp.llama_context_params) -> None:
        """Set the types on context params; a quantised V cache asks for flash attention outright."""
        cparams.type_k = KV_TYPES[self.type_k][0]
        cparams.type_v = KV_TYPES[self.type_v][0]
        flash = self.flash_attn
        if is_quantized(self.type_v) and flash == "auto":
            flash = "on"  # auto may resolve to off on some backends, and llama.cpp would then refuse V
        cparams.flash_attn_type = FLASH_ATTN[flash]

    def describe(self, model_meta: BaseModelInfo, cells: int) -> str:
        """`cells` tokens of KV in these types, in MiB, and what they save against f16 (for the load log)."""
        used = kv_bytes_per_token(model_meta, self.type_k, self.type_v) * cells
        f16 = kv_bytes_per_token(model_meta) * cells
        mib = 1024 * 1024
        saving = f", {100 * (1 - used / f16):.0f}% less than f16 ({f16 / mib:.1f} MiB)" if used != f16 else ""
        return f"KV cache {self.type_k}/{self.type_v}: {used / mib:.1f} MiB for {cells} cells{saving}"
