"""Claims on adapter names: what the catalogue holds instead of a lock while an adapter is checked, converted
and opened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Claims:
    """Which names a load or an unload is changing, and whether a reload is changing every name.

    An operation claims its name, does its file I/O and llama.cpp work with nothing held, and commits on
    the event loop in one step with no await. A second claim of a busy name waits until the first ends
    (a second load of the same name then sees the first one's entry, as it did under one lock); claims
    of other names go on. A reload claims every name: it waits for the claims already made, and new
    ones wait for it. All waits are on events, and each ends when its waiter is cancelled.
    """

    def __init__(self) -> None:
        self._names: dict[str, asyncio.Event] = {}
        self._every: asyncio.Event | None = None

    @asynccontextmanager
    async def name(self, name: str) -> AsyncIterator[None]:
        """`name` is this caller's until the block ends."""
        while (busy := self._every or self._names.get(name)) is not None:
            await busy.wait()
        done = self._names[name] = asyncio.Event()
        try:
            yield
        finally:
            del self._names[name]
            done.set()

    @asynccontextmanager
    async def every(self) -> AsyncIterator[None]:
        """Every name is this caller's until the block ends: no claim is made meanwhile."""
        while self._every is not None:
            await self._every.wait()
        done = self._every = asyncio.Event()
        try:
            while self._names:
                await next(iter(self._names.values())).wait()
            yield
        finally:
            self._every = None
            done.set()
