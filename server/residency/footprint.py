"""A model's memory footprint estimated before it loads: weights, KV cache and compute buffers, from the GGUF header.

The terms are llama.cpp's own buffers, as its load log reports them: the weights (the tensor data),
a KV cache of n_ctx × parallel cells per context, each cell holding K and V for every layer's
KV heads, an output buffer of one logits row per sequence, and a compute buffer that the worst
case graph (n_batch tokens) reserves, dominated by n_batch rows of logits. A draft model adds its own
footprint with one context of the same geometry. Checked against the measured RSS in tests/test_lifecycle.py.

n_gpu_layers = "auto" is decided here, as part of the estimate, so the budget check and the load see one
number (`as_placed` hands it to the load). Each estimate plans anew against the GPU room it is given (what
the other models hold: engine/offload.py), and the footprint records that room (`planned`): the residency
plans again when the room changed before the load reserved its own (residency/manager.py).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.errors import ModelFileError
from ..engine.gguf_header import GGUFLayoutError, read_tensor_sizes
from ..engine.kv import row_bytes
from ..engine.model_dims import model_dims, model_keys, split_tensor_count
from ..engine.offload import ALONE, MIB, GpuRoom, fit_layers, gpu_device
from ..models_toml import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Footprint:
    """Estimated bytes of one loaded model; `per_context` is paid again by each llama.cpp context it opens."""

    weights: int
    kv_per_context: int
    compute_per_context: int
    gpu_share: float = 0.0  # of weights and KV, on the GPU (n_gpu_layers / layers)
    gpu_layers: int = 0  # n_gpu_layers as the load gets it ("auto" resolved; -1: all)
    draft: Footprint | None = None  # the draft model's, with its one context (however many the model opens)
    planned: GpuRoom | None = None  # the GPU room "auto" was decided in; None when nothing was planned on a GPU
    prompt_cache: int = 0  # the prompt cache's RAM budget (engine/prompt_cache.py): host memory, whatever the layers

    @property
    def per_context(self) -> int:
        return self.kv_per_context + self.compute_per_context

    def total(self, contexts: int = 1) -> int:
        draft = self.draft.total() if self.draft else 0
        return self.weights + max(1, contexts) * self.per_context + draft + self.prompt_cache

    def gpu(self, contexts: int = 1) -> int:
        draft = self.draft.gpu() if self.draft else 0
        return int(self.gpu_share * (self.weights + max(1, contexts) * self.kv_per_context)) + draft

    def cpu(self, contexts: int = 1) -> int:
        return self.total(contexts) - self.gpu(contexts)

    @property
    def gpu_compute(self) -> int:
        """The compute buffer on the GPU, there once any layer is (it is outside `gpu()`, as the budget counts)."""
        return (self.compute_per_context if self.gpu_share > 0 else 0) + (self.draft.gpu_compute if self.draft else 0)


def beside(others: GpuRoom, footprint: Footprint) -> GpuRoom:
    """The room left to plan in once `footprint` is reserved too and not yet on the device."""
    return GpuRoom(others.pending + footprint.gpu() + footprint.gpu_compute,
                   None if others.budget_left is None else others.budget_left - footprint.gpu())


@functools.lru_cache(maxsize=64)
def _header(path: str, stamp: tuple[int, int, int]) -> tuple[dict[str, Any], dict[str, tuple[int, list[int]]]]:
    """The header's metadata (tokenizer arrays left out) and tensor sizes, once per file version (`stamp`):
    walking past the vocabulary takes ~190 ms for the default model, paid on every on-demand load
    (the cold first token, bench/bench_lifecycle.py) and every listing of an unloaded model. Callers
    must not change what it returns."""
    return read_tensor_sizes(Path(path), model_keys)


def estimate(config: ModelConfig, others: GpuRoom = ALONE) -> Footprint:
    """The footprint of `config` loaded with one context, "auto" planned in the GPU room `others` leave
    (ModelFileError when the header cannot be read)."""
    draft = None
    own = others
    if config.draft_model is not None:  # loaded with the model's settings (engine/model.py), placed before it
        draft = estimate(config.model_copy(update={"path": config.draft_model, "draft_model": None,
                                                   "prompt_cache_ram": 0}), others)  # the target's cache alone
        own = beside(others, draft)
    path = Path(config.path)
    try:
        stat = path.stat()
        values, tensors = _header(str(path), stamp_of(stat))
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except GGUFLayoutError as exc:
        raise ModelFileError(str(exc)) from None
    # Every value is checked before use: a header claiming 2**28 layers would otherwise build a list per layer.
    dims = model_dims(path, values, split_tensor_count(path, values, len(tensors)))
    n_layer = dims.n_layer or 0
    n_embd = dims.n_embd or 0
    n_head = dims.n_head or (1,) * n_layer
    n_head_kv = dims.n_head_kv or n_head
    head_dim = n_embd // max(1, max(n_head, default=1))
    k_len = head_dim if dims.key_length is None else dims.key_length
    v_len = head_dim if dims.value_length is None else dims.value_length
    n_ctx_train = dims.context_length or 0
    n_ctx = min(config.n_ctx, n_ctx_train) if n_ctx_train > 0 else config.n_ctx
    embd = tensors.get("token_embd.weight") or tensors.get("output.weight")
    n_vocab = embd[1][1] if embd is not None and len(embd[1]) > 1 else 0

    # Per layer, as GGUF may give each layer its own KV head count (engine/kv.py: a quantised row is whole blocks).
    per_cell = sum(row_bytes(config.cache_type_k, h * k_len) + row_bytes(config.cache_type_v, h * v_len)
                   for h in n_head_kv)
    kv = int(n_ctx * config.parallel * per_cell)
    n_batch = max(config.n_batch, config.parallel)
    # Worst-case graph: n_batch rows of logits, the attention mask over n_ctx, activations; plus the
    # output buffer (one row of logits per sequence).
    compute = 4 * (n_batch * (n_vocab + n_ctx + n_embd) + config.parallel * n_vocab)
    if config.rpc and config.n_gpu_layers == -1:
        # Every layer and its KV cache live on the RPC workers; this host keeps only the input embeddings (llama.cpp
        # never offloads the input layer) and its compute buffer, so only those count against memory_budget.
        input_layer = tensors.get("token_embd.weight")
        return Footprint(weights=input_layer[0] if input_layer is not None else 0, kv_per_context=0,
                         compute_per_context=compute, gpu_layers=-1, prompt_cache=config.prompt_cache_bytes())
    weights = sum(size for size, _ in tensors.values())
    gpu_layers = config.n_gpu_layers
    planned = None
    if gpu_layers == "auto":
        # Rounded up, so that the layers' share of the budget (Footprint.gpu) never exceeds the room they fit.
        gpu_layers, on_gpu = _auto_layers(config.name, n_layer, -(-(weights + kv) // max(1, n_layer)), compute, own)
        planned = others if on_gpu else None  # a CPU build has nothing to plan again
    offloaded = n_layer if gpu_layers < 0 else min(gpu_layers, n_layer)
    share = offloaded / n_layer if n_layer else 0.0
    return Footprint(weights=weights, kv_per_context=kv, compute_per_context=compute, gpu_share=share,
                     gpu_layers=gpu_layers, draft=draft, planned=planned, prompt_cache=config.prompt_cache_bytes())


def _auto_layers(name: str, n_layer: int, per_layer: int, fixed: int, others: GpuRoom) -> tuple[int, bool]:
    """n_gpu_layers = "auto" decided for one load (the device probed now), and whether there was a GPU."""
    device = gpu_device()
    if device is None:
        log.info("model %s runs on the CPU (n_gpu_layers auto: no GPU backend in this build of llama.cpp)", name)
        return 0, False
    layers = fit_layers("auto", n_layer, per_layer, fixed, device, others=others)
    budget = "" if others.budget_left is None else f", {others.budget_left // MIB} MiB of gpu_memory_budget left"
    log.info("model %s: %d of %d layers on %s (auto: %d MiB free, %d MiB reserved by loads under way%s; %d MiB "
             "needed per layer)", name, n_layer if layers < 0 else layers, n_layer, device.name, device.free // MIB,
             others.pending // MIB, budget, per_layer // MIB)
    return layers, True


def stamp_of(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def as_placed(config: ModelConfig, footprint: Footprint) -> ModelConfig:
    """`config` as its load opens it: n_gpu_layers "auto" replaced by the number its footprint was estimated with,
    so the load neither walks the header again nor decides anything the budget check did not see."""
    if config.n_gpu_layers != "auto":
        return config
    return config.model_copy(update={"n_gpu_layers": footprint.gpu_layers})


def estimate_together(configs: Iterable[ModelConfig], others: GpuRoom) -> dict[str, Footprint]:
    """The footprints of models opened together (a reload's): each plans beside the ones before it."""
    footprints: dict[str, Footprint] = {}
    for config in configs:
        footprints[config.name] = footprint = estimate_or_size(config, others)
        others = beside(others, footprint)
    return footprints


def estimate_or_size(config: ModelConfig, others: GpuRoom = ALONE) -> Footprint:
    """The footprint of `config`; for a file whose header cannot be read, its size (the load then says why)."""
    try:
        return estimate(config, others)
    except ModelFileError as exc:
        log.debug("no memory estimate for %s: %s", config.name, exc)
        try:
            return Footprint(weights=Path(config.path).stat().st_size, kv_per_context=0, compute_per_context=0)
        except OSError:
            return Footprint(weights=0, kv_per_context=0, compute_per_context=0)
