"""The GGUF layout check an adapter file passes before gguf.GGUFReader or llama.cpp reads it.

The walk itself is server/engine/gguf_header.py; here its refusals become adapter errors that name
the file (400s on the admin API, log lines for the watcher).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from ..engine import gguf_header
from ..errors import AdapterError


class TruncatedGGUFError(AdapterError):
    """The file ends before what its header describes: damaged, or a copy still being written."""


def check_gguf_layout(stream: BinaryIO, path: Path) -> None:
    """Refuse (AdapterError naming `path`) a GGUF whose header does not fit its file."""
    try:
        gguf_header.check_gguf_layout(stream, path)
    except gguf_header.TruncatedGGUFError as exc:
        raise TruncatedGGUFError(str(exc), param="path") from None
    except gguf_header.GGUFLayoutError as exc:
        raise AdapterError(str(exc), param="path") from None
