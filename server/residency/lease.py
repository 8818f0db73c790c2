"""A lease: one loaded model kept busy (never unloaded) by whoever holds it, until it is released."""

from __future__ import annotations

from collections.abc import Callable

from .resident import ServedModel


class Lease:
    """A hold on a loaded model, from `Residency.acquire()` or `hold()`: the model is not unloaded until
    `release()`. Releasing twice releases once, so a `finally` and an early release never count twice."""

    __slots__ = ("_release", "served")

    def __init__(self, served: ServedModel, release: Callable[[], None]) -> None:
        self.served = served
        self._release: Callable[[], None] | None = release

    @property
    def released(self) -> bool:
        return self._release is None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
