"""The adapter catalogue in process, over a fake base and engine: a slow adapter check or PEFT conversion holds
nothing that a model load (attach) or another adapter's unload waits for."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nomoat.adapters import catalogue as catalogue_module
from nomoat.adapters.catalogue import AdapterCatalogue
from nomoat.engine.adapters import LoraAdapter

WAIT = 10.0  # seconds: far above what each step takes, so only a real stall fails the test


class _Engine:
    """What the catalogue calls on an engine: adapters opened at once, unloads recorded, always idle."""

    def __init__(self) -> None:
        self.unloaded: list[str] = []
        self.outstanding = 0
        self.model = self  # the catalogue reads engine.model.base_info()

    def base_info(self) -> None:
        return None  # prepare_adapter is a fake here too

    def load_adapter(self, name: str, source: Path, gguf_path: Path,
                     digest: str) -> concurrent.futures.Future[LoraAdapter]:
        done: concurrent.futures.Future[LoraAdapter] = concurrent.futures.Future()
        done.set_result(LoraAdapter(name, source, gguf_path, digest, ptr=object()))
        return done

    def unload_adapter(self, adapter: LoraAdapter) -> None:
        adapter.unloading = True
        self.unloaded.append(adapter.name)

    async def wait_idle(self) -> None:
        return None


class _Bases:
    """One base model "m", not loaded until a test says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine: _Engine | None = None

    def base_name(self, model_id: str | None) -> str:
        return "m"

    def base_path(self, base: str) -> Path:
        return self.path

    def engine_of(self, base: str) -> Any:
        return self.engine

    def hold_engine(self, base: str) -> tuple[Any, Callable[[], None]]:
        return self.engine, lambda: None

    def is_model_id(self, name: str) -> bool:
        return name == "m"

    def in_child(self, base: str) -> bool:
        return False


@pytest.fixture
def slow_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """prepare_adapter for a source named "slow" blocks until released, as a PEFT conversion takes seconds;
    every other source is ready at once. Yields (entered, release)."""
    entered, release = threading.Event(), threading.Event()

    def prepare(source: Path, base: Any, cache_dir: Path) -> tuple[Path, str]:
        if source.name == "slow":
            entered.set()
            release.wait(WAIT)
        return source, f"sha-{source.name}"

    monkeypatch.setattr(catalogue_module, "prepare_adapter", prepare)
    monkeypatch.setattr(catalogue_module.BaseModelInfo, "from_gguf", staticmethod(lambda path: None))
    yield entered, release
    release.set()


def test_a_slow_conversion_keeps_neither_a_model_load_nor_another_unload_waiting(
        tmp_path: Path, slow_check: tuple[threading.Event, threading.Event]) -> None:
    entered, release = slow_check

    async def scenario() -> None:
        bases = _Bases(tmp_path / "m.gguf")
        catalogue = AdapterCatalogue(bases, tmp_path / "cache")
        await catalogue.load("quick", tmp_path / "quick", None, 1.0)
        await catalogue.load("other", tmp_path / "other", None, 1.0)
        assert catalogue.get("quick") is not None and catalogue.get("quick").adapter.ptr is None

        slow = asyncio.create_task(catalogue.load("slow", tmp_path / "slow", None, 1.0))
        assert await asyncio.to_thread(entered.wait, WAIT)
        engine = _Engine()
        # The base loads (Residency calls attach) and another adapter unloads while "slow" is converting.
        await asyncio.wait_for(catalogue.attach("m", engine), WAIT)
        assert catalogue.get("quick").adapter.ptr is not None
        bases.engine = engine  # Residency marks the base loaded
        await asyncio.wait_for(catalogue.unload("other"), WAIT)
        assert catalogue.get("other") is None and not slow.done()

        release.set()
        entry = await asyncio.wait_for(slow, WAIT)
        # Checked detached before the base loaded, listed after its attach(): opened on the engine before listing.
        assert entry.adapter.ptr is not None and catalogue.get("slow") is entry
        await catalogue.aclose()

    asyncio.run(scenario())


def test_a_second_load_of_the_same_name_waits_for_the_first_and_is_refused(
        tmp_path: Path, slow_check: tuple[threading.Event, threading.Event]) -> None:
    entered, release = slow_check

    async def scenario() -> None:
        catalogue = AdapterCatalogue(_Bases(tmp_path / "m.gguf"), tmp_path / "cache")
        first = asyncio.create_task(catalogue.load("x", tmp_path / "slow", None, 1.0))
        assert await asyncio.to_thread(entered.wait, WAIT)
        second = asyncio.create_task(catalogue.load("x", tmp_path / "quick", None, 1.0))
        await asyncio.sleep(0)
        assert not second.done()
        release.set()
        assert (await first).adapter.source.name == "slow"
        with pytest.raises(catalogue_module.ConflictError, match="already in use"):
            await second

    asyncio.run(scenario())


def test_attach_opens_an_adapter_listed_while_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime load that finishes while attach() opens the others lists its adapter detached (the base is
    not marked loaded yet); attach() opens it too before it returns."""
    async def scenario() -> None:
        bases = _Bases(tmp_path / "m.gguf")
        catalogue = AdapterCatalogue(bases, tmp_path / "cache")
        monkeypatch.setattr(catalogue_module, "prepare_adapter", lambda s, b, c: (s, f"sha-{s.name}"))
        monkeypatch.setattr(catalogue_module.BaseModelInfo, "from_gguf", staticmethod(lambda path: None))
        await catalogue.load("first", tmp_path / "first", None, 1.0)
        reopen = catalogue._reopen_all
        late: list[asyncio.Task[Any]] = []
        loop = asyncio.get_running_loop()

        def reopen_and_load_another(*args: Any) -> Any:
            if not late:  # a load on the loop, finished before this reopening returns
                done = threading.Event()

                def start() -> None:
                    late.append(asyncio.ensure_future(catalogue.load("late", tmp_path / "late", None, 1.0)))
                    late[0].add_done_callback(lambda _: done.set())
                loop.call_soon_threadsafe(start)
                assert done.wait(WAIT)
            return reopen(*args)

        monkeypatch.setattr(catalogue, "_reopen_all", reopen_and_load_another)
        await asyncio.wait_for(catalogue.attach("m", _Engine()), WAIT)
        assert late[0].result().adapter.ptr is None  # listed detached: the base was not loaded yet
        assert all(e.adapter.ptr is not None for e in catalogue.entries())
        await catalogue.aclose()

    asyncio.run(scenario())
