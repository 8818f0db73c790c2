"""Writes random LoRA adapters as GGUF files (the layout llama.cpp loads) for the embedded model."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

# SmolLM2-135M: 30 blocks, n_embd 576, n_ff 1536, 3 KV heads of 64 (k/v width 192).
N_LAYER, N_EMBD, N_FF, KV_WIDTH = 30, 576, 1536, 192
DIMS = {  # module -> (n_in, n_out)
    "attn_q": (N_EMBD, N_EMBD),
    "attn_k": (N_EMBD, KV_WIDTH),
    "attn_v": (N_EMBD, KV_WIDTH),
    "attn_output": (N_EMBD, N_EMBD),
    "ffn_gate": (N_EMBD, N_FF),
    "ffn_up": (N_EMBD, N_FF),
    "ffn_down": (N_FF, N_EMBD),
}


def write_lora(path: Path, seed: int, *, rank: int = 4, alpha: float = 4.0, std: float = 0.05,
               modules: tuple[str, ...] = ("attn_q", "attn_v", "ffn_down"), arch: str = "llama",
               dims: dict[str, tuple[int, int]] | None = None, n_layer: int = N_LAYER) -> Path:
    """A rank-`rank` adapter with random float32 matrices; different seeds give different adapters."""
    rng = np.random.default_rng(seed)
    dims = dims or DIMS
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for layer in range(n_layer):
        for module in modules:
            n_in, n_out = dims[module]
            writer.add_tensor(f"blk.{layer}.{module}.weight.lora_a",
                              rng.normal(0, std, (rank, n_in)).astype(np.float32))
            writer.add_tensor(f"blk.{layer}.{module}.weight.lora_b",
                              rng.normal(0, std, (n_out, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
