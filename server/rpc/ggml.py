"""llama.cpp's RPC backend through ctypes (llama-cpp-python binds none of it): the worker's server, and the devices
and split a model offloads to."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from .endpoints import Endpoint, WorkerUnreachable, check_reachable, parse_endpoint

REBUILD = ('CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python '
           'llama-cpp-python')
_GGML_BACKEND_DEVICE_TYPE_CPU = 0


class RpcUnavailable(Exception):
    """The installed llama-cpp-python was built without the RPC backend."""

    def __init__(self) -> None:
        super().__init__(f"this llama-cpp-python build has no RPC backend; rebuild it with RPC on: {REBUILD}")


def supports_rpc() -> bool:
    return bool(llama_cpp.llama_supports_rpc()) and _lib_dir().joinpath("libggml-rpc.so").exists()


def require_rpc() -> None:
    if not supports_rpc():
        raise RpcUnavailable


def rpc_devices(endpoints: list[Endpoint]) -> list[int]:
    """Each worker's devices (ggml_backend_dev_t addresses), in order; never registered globally, so only the
    model that lists them offloads to them. Connects to every worker: call check_reachable() first."""
    require_rpc()
    rpc, base = _rpc_lib(), _base_lib()
    devices: list[int] = []
    for endpoint in endpoints:
        reg = rpc.ggml_backend_rpc_add_server(str(endpoint).encode())
        if not reg:
            raise WorkerUnreachable(f"worker {endpoint}: llama.cpp could not add it as an RPC server")
        devices += [base.ggml_backend_reg_dev_get(reg, i) for i in range(base.ggml_backend_reg_dev_count(reg))]
    return devices


@dataclass(frozen=True)
class Offload:
    """What llama_model_params points at for an RPC model: kept alive as long as the params are used."""

    devices: ctypes.Array[ctypes.c_void_p]  # NULL-terminated
    tensor_split: ctypes.Array[ctypes.c_float] | None


def offload(endpoints: list[str], weights: list[float]) -> Offload:
    """The RPC devices of `endpoints` (checked reachable first: llama.cpp aborts on one that is not) and the split
    over them; ValueError when `weights` name more devices than the workers have."""
    require_rpc()
    parsed = [parse_endpoint(e) for e in endpoints]
    check_reachable(parsed)
    found = rpc_devices(parsed)
    if len(weights) > len(found):
        raise ValueError(f"tensor_split has {len(weights)} weights; the workers have {len(found)} devices")
    devices = (ctypes.c_void_p * (len(found) + 1))(*found, None)
    split = None
    if weights:
        split = (ctypes.c_float * llama_cpp.llama_max_devices())(*weights)
    return Offload(devices, split)


def start_server(endpoint: Endpoint, cache_dir: Path | None, n_threads: int) -> None:
    """Serve this machine's CPU to RPC clients (blocks for ever), as llama.cpp's rpc-server does without a GPU."""
    require_rpc()
    ggml = _ggml_lib()
    ggml.ggml_backend_load_all()
    cpu = ggml.ggml_backend_dev_by_type(_GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        raise RuntimeError("llama.cpp reports no CPU device")
    devices = (ctypes.c_void_p * 1)(cpu)
    cache = str(cache_dir).encode() if cache_dir is not None else None
    _rpc_lib().ggml_backend_rpc_start_server(str(endpoint).encode(), cache, n_threads, 1, devices)


def _lib_dir() -> Path:
    return Path(llama_cpp.__file__).parent / "lib"


def _rpc_lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_lib_dir() / "libggml-rpc.so"))
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


def _ggml_lib() -> ctypes.CDLL:
    ggml = ctypes.CDLL(str(_lib_dir() / "libggml.so"))
    ggml.ggml_backend_load_all.restype = None
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    return ggml


def _base_lib() -> ctypes.CDLL:
    base = ctypes.CDLL(str(_lib_dir() / "libggml-base.so"))
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    return base
