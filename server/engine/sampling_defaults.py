"""A model's sampling defaults: what a request that leaves a sampling field out gets, and where each value came from.

Precedence, highest first: the request's own value (the protocols apply it), models.toml's, the GGUF's
`general.sampling.*` keys (llama.cpp's converter writes them from the model's generation_config.json),
then llama.cpp's server defaults (common/common.h's common_params_sampling).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .gguf_header import GGUFLayoutError, read_metadata

Source = Literal["request", "models.toml", "gguf", "server"]

# Each default's GGUF key (gguf-py's Keys.General.SAMPLING_*), and its type.
GGUF_KEYS: dict[str, tuple[str, type]] = {
    "temperature": ("general.sampling.temp", float),
    "top_p": ("general.sampling.top_p", float),
    "top_k": ("general.sampling.top_k", int),
    "min_p": ("general.sampling.min_p", float),
    "repeat_penalty": ("general.sampling.penalty_repeat", float),
}
# The bounds the protocols accept for the same field: a file's value outside them is ignored, never applied.
_BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "top_k": (0, 1 << 20), "min_p": (0.0, 1.0),
    "repeat_penalty": (0.0, 10.0),
}
_POSITIVE = {"top_p", "repeat_penalty"}  # 0 is outside the protocols' range too


@dataclass(frozen=True)
class SamplingDefaults:
    """The values a request gets for the fields it leaves out; `max_tokens` None: the server's max_tokens_limit."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int | None = None
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False)

    def as_json(self) -> dict[str, dict[str, Any]]:
        """Each value with where it came from, as GET /v1/models/{id} shows them."""
        return {name: {"value": getattr(self, name), "source": self.sources.get(name, "server")}
                for name in (*GGUF_KEYS, "max_tokens")}


SERVER_DEFAULTS = SamplingDefaults()  # llama.cpp's server's


def resolve_defaults(gguf: Mapping[str, float | int], configured: Mapping[str, float | int | None]) -> SamplingDefaults:
    """models.toml's values (`configured`, None: unset) over the GGUF's over the server's."""
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for name in (*GGUF_KEYS, "max_tokens"):
        if configured.get(name) is not None:
            values[name], sources[name] = configured[name], "models.toml"
        elif name in gguf:
            values[name], sources[name] = gguf[name], "gguf"
    return SamplingDefaults(**values, sources=sources)


def gguf_sampling(lookup: Callable[[str], Any]) -> dict[str, float | int]:
    """The sampling defaults a model file sets, by their SamplingDefaults names; `lookup` reads one metadata key
    (a number, or llama.cpp's string of it; None when absent). A value that is not a finite number in the
    protocol's range is left out: a file never makes a request invalid."""
    found: dict[str, float | int] = {}
    for name, (key, kind) in GGUF_KEYS.items():
        raw = lookup(key)
        try:
            # Six decimals, as llama.cpp prints a float32 key: 0.7 read from the header or from llama.cpp is 0.7.
            value = kind(round(float(raw), 6)) if raw is not None and not isinstance(raw, bool) else None
        except (TypeError, ValueError, OverflowError):
            value = None
        low, high = _BOUNDS[name]
        if value is not None and math.isfinite(value) and low <= value <= high and (value > 0 or name not in _POSITIVE):
            found[name] = value
    return found


def read_gguf_sampling(path: Path) -> dict[str, float | int]:
    """The file's sampling defaults from its header, without loading it ({} when it cannot be read: its load says
    why). Blocking (a walk past the vocabulary): call it off the event loop."""
    try:
        stat = path.stat()
        return dict(_header_sampling(str(path), (stat.st_mtime_ns, stat.st_size, stat.st_ino)))
    except (OSError, GGUFLayoutError):
        return {}


@functools.lru_cache(maxsize=64)
def _header_sampling(path: str, stamp: tuple[int, int, int]) -> tuple[tuple[str, float | int], ...]:
    """Once per file version (`stamp`): every listing of an unloaded model asks again."""
    values = read_metadata(Path(path), lambda key: key.startswith("general.sampling."))
    return tuple(gguf_sampling(values.get).items())
