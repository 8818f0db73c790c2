"""The trainer child's memory, estimated before it starts from the base's GGUF header: reserved in the budget.

transformers dequantises the GGUF to fp32 (4 bytes a parameter, whatever the file's quantisation), and while it
converts, the file's own tensors are read too: the weights count once at 4 bytes plus the file's size. The LoRA
adds rank × (in + out) parameters per adapted matrix, each with its gradient and Adam's two moments (16 bytes).
Activations kept for the backward pass grow with micro_batch × max_tokens: per layer about ACTIVATION_ROWS
rows of n_embd and the MLP's width, and the logits with their softmax and gradient (3 × n_vocab a token).
RUNTIME_BYTES is torch, transformers and peft imported, with their allocator's slack.

Measured: the embedded SmolLM2 135M (Q4_1, 92 MiB), 8 examples of ~52 tokens, batch 4, rank 8, one thread, trained
by `python -m nomoat.tuning.train` to its adapter: peak RSS 1,511 MiB (getrusage of the child). The estimate for that
job is 2,960 MiB (weights 605, LoRA 37, activations 1,617 with each example bounded by its 215-byte line, runtime 700):
it covers the peak, the slack in the activations, bounded by bytes rather than tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..engine.gguf_header import read_tensor_sizes
from ..engine.model_dims import model_keys

RUNTIME_BYTES = 700 * 1024 * 1024
# Activations a layer keeps per token for the backward pass, in units of n_embd floats (attention's q, k, v, its
# output, two norms, the residuals) plus the MLP's gate, up and their product (counted in its own width).
ACTIVATION_ROWS = 12
MLP_ROWS = 3
# GGUF's names of the matrices the trainer adapts (the seven projections: spec.py's DEFAULT_TARGET_MODULES).
ADAPTED = ("attn_q.", "attn_k.", "attn_v.", "attn_output.", "ffn_gate.", "ffn_up.", "ffn_down.")


@dataclass(frozen=True)
class TrainFootprint:
    weights: int
    lora: int
    activations: int
    runtime: int = RUNTIME_BYTES

    def total(self) -> int:
        return self.weights + self.lora + self.activations + self.runtime


def estimate(gguf: Path, rank: int, micro_batch: int, max_tokens: int) -> TrainFootprint:
    """The trainer's peak for one job (OSError, or the header reader's errors, when the file cannot be read)."""
    _, tensors = read_tensor_sizes(gguf, model_keys)
    file_bytes = sum(size for size, _ in tensors.values())
    params = sum(math.prod(dims) for _, dims in tensors.values())
    lora = sum(rank * sum(dims[:2]) for name, (_, dims) in tensors.items()
               if len(dims) >= 2 and any(key in name for key in ADAPTED))
    embd = tensors.get("token_embd.weight")
    n_embd, n_vocab = (embd[1][0], embd[1][1]) if embd is not None and len(embd[1]) > 1 else (0, 0)
    layers = {name.split(".")[1] for name in tensors if name.startswith("blk.")}
    up = next((dims for name, (_, dims) in tensors.items() if name.endswith("ffn_up.weight") and len(dims) > 1), None)
    n_ff = up[1] if up is not None else 4 * n_embd
    tokens = micro_batch * max_tokens
    per_token = len(layers) * (ACTIVATION_ROWS * n_embd + MLP_ROWS * n_ff) + 3 * n_vocab
    return TrainFootprint(weights=4 * params + file_bytes, lora=16 * lora, activations=4 * tokens * per_token)
