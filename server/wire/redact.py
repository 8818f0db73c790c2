"""File paths taken out of messages that a key which is not an admin's is shown (load errors): the server's
directory layout stays the operator's, who reads it in the log."""

from __future__ import annotations

import re

# A file path in a message, quoted ('/models/x.gguf', with spaces) or bare (/models/x.gguf: ...), absolute or
# under ~; not a URL's path (after ':' or '/') nor a ratio like tok/s (after a word character).
_QUOTED_PATH = re.compile(r"""(['"])~?/[^'"\n]*\1""")
_BARE_PATH = re.compile(r"""(?<![\w.~/:-])~?/[^\s'"(),;]+""")


def without_paths(message: str, *known: str) -> str:
    """`message` with each file path in it replaced by <path>: what a key that is not an admin's is shown of a
    load error (the server's directory layout stays the operator's, who reads it in the log). The `known`
    paths (the model's file) go first, whatever they hold (spaces); then anything that looks like one."""
    for path in sorted(known, key=len, reverse=True):
        message = message.replace(path, "<path>") if path.startswith(("/", "~")) else message
    message = _QUOTED_PATH.sub(lambda m: f"{m.group(1)}<path>{m.group(1)}", message)
    return _BARE_PATH.sub(lambda m: "<path>:" if m.group().endswith(":") else "<path>", message)
