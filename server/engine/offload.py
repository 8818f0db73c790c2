"""Where n_gpu_layers = "auto" puts a model: the GPU device llama.cpp would offload to, and how many layers fit it.

A model plans against what is left of the GPU when its load is decided, never the whole card:
  room = min(device free − MARGIN − pending, budget_left) − its own compute buffer,
where `device free` is probed at the time of the plan, so it already counts what the models loaded (and
still closing) have allocated; `pending` is what the loads under way have reserved but the device may not
show yet (a plan made while another model opens would otherwise count that model's memory as free: both
would plan against the same bytes); and `budget_left` is gpu_memory_budget less what the budget has
reserved for the models loaded, loading and closing (residency/room.py), None without a budget. The
inputs are a `GpuRoom`, the value a plan records, so a load whose room changed before it reserved plans
again (residency/manager.py), and every load plans anew: a model unloaded and loaded later sees the GPU
as it is then.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Left free on the device, as llama.cpp's --fit does (--fit-target; common/common.h: fit_params_target, 1024 MiB
# per device): the estimate misses the CUDA context, cuBLAS workspaces and the graph's own growth.
MARGIN = 1024 * MIB
# ggml_backend_dev_type (ggml-backend.h): CPU, GPU, IGPU (integrated, as Apple's), ACCEL (BLAS, AMX: host memory).
_GPU_TYPES = (1, 2)


@dataclass(frozen=True)
class GpuRoom:
    """What other models hold of the GPU when one plans (bytes): see the module's docstring."""

    pending: int = 0  # reserved by loads under way, which the device's free memory may not show yet
    budget_left: int | None = None  # gpu_memory_budget less what it has reserved; None without a budget


ALONE = GpuRoom()  # no other model on the GPU, no budget: a plan outside the residency (a lone engine, a test)


@dataclass(frozen=True)
class GpuDevice:
    """The first GPU ggml lists, and its free memory when probed."""

    name: str
    free: int


def fit_layers(requested: int | Literal["auto"], n_layer: int, per_layer: int, fixed: int,
               device: GpuDevice | None, margin: int = MARGIN, others: GpuRoom = ALONE) -> int:
    """Layers to offload: an integer as given; for "auto", 0 without a GPU, else as many of the `n_layer` layers of
    `per_layer` bytes (weights and KV) as fit the room the module's docstring defines (`others`: what other
    models hold) less the `fixed` bytes (the compute buffer) the GPU holds once any layer is there; all of them
    (-1) when every one fits."""
    if requested != "auto":
        return requested
    if device is None or n_layer <= 0:
        return 0
    room = device.free - margin - others.pending
    if others.budget_left is not None:
        room = min(room, others.budget_left)
    room -= fixed
    if room <= 0:
        return 0
    fit = n_layer if per_layer <= 0 else min(n_layer, room // per_layer)
    return -1 if fit >= n_layer else int(fit)


def gpu_device() -> GpuDevice | None:
    """The GPU llama.cpp offloads to first, None in a build without one. llama_supports_gpu_offload() alone says
    too little: it is true in a CPU build with the RPC backend, whose devices appear only once a model names them."""
    import llama_cpp
    from llama_cpp._ggml import libggml

    if not llama_cpp.llama_supports_gpu_offload():
        return None
    lib = _bound(libggml)
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(dev) in _GPU_TYPES:
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            name = (lib.ggml_backend_dev_description(dev) or lib.ggml_backend_dev_name(dev) or b"GPU").decode(
                errors="replace")
            return GpuDevice(name=name, free=int(free.value))
    return None


@functools.cache
def _bound(lib: Any) -> Any:
    """ggml's device API, which llama_cpp's bindings do not declare, typed once (a wrong restype truncates pointers)."""
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_count.argtypes = []
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    return lib
