"""Where n_gpu_layers = "auto" puts a model: the GPU device llama.cpp would offload to, and how many layers fit it."""

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
class GpuDevice:
    """The first GPU ggml lists, and its free memory when probed."""

    name: str
    free: int


def fit_layers(requested: int | Literal["auto"], n_layer: int, per_layer: int, fixed: int,
               device: GpuDevice | None, margin: int = MARGIN) -> int:
    """Layers to offload: an integer as given; for "auto", 0 without a GPU, else as many of the `n_layer` layers of
    `per_layer` bytes (weights and KV) as fit the device's free memory less `margin` and the `fixed` bytes
    (the compute buffer) the GPU holds once any layer is there; all of them (-1) when every one fits."""
    if requested != "auto":
        return requested
    if device is None or n_layer <= 0:
        return 0
    room = device.free - margin - fixed
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
