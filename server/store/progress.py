"""A download's progress as the server tells it: log lines at every tenth, and each read told to a listener."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from huggingface_hub.utils.tqdm import tqdm

log = logging.getLogger("nomoat.store.hub")  # the lines read as the download's own, after its "pulling" line

# Each file's progress while it downloads: its repo path, bytes done, bytes in all. Called on the download's
# thread; an exception it raises (hub.PullCancelled) stops the download.
ProgressReport = Callable[[str, int, int], None]


class LoggedProgress(tqdm):
    """A progress "bar" for the server: a log line at every tenth of a download instead of a bar on a terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._done = int(kwargs.get("initial") or 0)
        self._total = kwargs.get("total")
        self._tenth = -1
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped in huggingface_hub

    def update(self, n: float | None = 1) -> bool | None:
        self._done += int(n or 0)
        if self._total:
            tenth = min(10, self._done * 10 // self._total)
            if tenth > self._tenth:
                self._tenth = tenth
                log.info("downloaded %d%% of %.1f MB", tenth * 10, self._total / 1e6)  # the file: the line before
        return None


def reporting(filename: str, size: int, report: ProgressReport) -> type[LoggedProgress]:
    """The progress class for one file's download: logged as the server logs it, and each read told to `report`."""

    class _Reporting(LoggedProgress):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            report(filename, self._done, size)

        def update(self, n: float | None = 1) -> bool | None:
            super().update(n)
            report(filename, self._done, size)
            return None

    return _Reporting
