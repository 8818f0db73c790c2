"""Opening adapter files only when they are regular files, so a FIFO or device never blocks or feeds a load."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import AdapterError

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def open_regular(path: Path, param: str = "path") -> BinaryIO:
    """`path` open for binary reading; AdapterError if it is not a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer that may never
    come; the type is then taken from the open descriptor, so a file swapped in between is seen too.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise AdapterError(f"{path}: is {kind}; adapters are read from regular files only", param=param)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int, param: str = "path") -> bytes:
    """The bytes of the regular file `path`; AdapterError if it is not one or holds more than `limit` bytes."""
    with open_regular(path, param) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise AdapterError(f"{path}: is larger than {limit} bytes, too large for what it should hold", param=param)
    return data
