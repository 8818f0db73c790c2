"""The background task supervisor: tasks held until done, failures logged once by name, close cancels and awaits."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from nomoat.tasks import Supervisor


def test_a_task_is_held_until_done_and_returns_its_result() -> None:
    async def scenario() -> None:
        supervisor = Supervisor()
        release = asyncio.Event()

        async def work() -> int:
            await release.wait()
            return 7

        task = supervisor.spawn(work(), name="work")
        assert task.get_name() == "work"
        assert len(supervisor) == 1 and supervisor.active == {task}
        release.set()
        assert await task == 7
        await asyncio.sleep(0)  # the done callback runs after the awaiting task resumes
        assert len(supervisor) == 0 and not supervisor.active

    asyncio.run(scenario())


def test_a_failed_task_is_logged_once_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        supervisor = Supervisor()

        async def fail() -> None:
            raise ValueError("broken")

        task = supervisor.spawn(fail(), name="the failing one")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        assert len(supervisor) == 0
        del task
        gc.collect()  # asyncio would log a never-retrieved exception here if the supervisor had not

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].name == "nomoat.tasks"
    assert "'the failing one'" in failures[0].getMessage()
    assert failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], ValueError)


def test_a_cancelled_task_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        supervisor = Supervisor()
        task = supervisor.spawn(asyncio.Event().wait(), name="waits forever")
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        assert len(supervisor) == 0

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_aclose_cancels_and_awaits_every_task_and_may_be_called_again() -> None:
    async def scenario() -> None:
        supervisor = Supervisor()
        unwound: list[str] = []

        async def waits(name: str) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                unwound.append(name)

        tasks = [supervisor.spawn(waits(n), name=n) for n in ("a", "b")]
        await asyncio.sleep(0)
        await supervisor.aclose()
        assert sorted(unwound) == ["a", "b"] and all(t.cancelled() for t in tasks)
        assert len(supervisor) == 0
        await supervisor.aclose()

    asyncio.run(scenario())


def test_aclose_also_ends_a_task_started_while_another_unwinds() -> None:
    async def scenario() -> None:
        supervisor = Supervisor()
        late: list[asyncio.Task[None]] = []

        async def starts_another_on_cancel() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                late.append(supervisor.spawn(asyncio.Event().wait(), name="late"))

        supervisor.spawn(starts_another_on_cancel(), name="first")
        await asyncio.sleep(0)
        await supervisor.aclose()
        assert len(late) == 1 and late[0].cancelled()
        assert len(supervisor) == 0

    asyncio.run(scenario())


def test_aclose_from_one_of_its_own_tasks_leaves_that_task_alone() -> None:
    async def scenario() -> None:
        supervisor = Supervisor()
        other = supervisor.spawn(asyncio.Event().wait(), name="other")

        async def closer() -> str:
            await supervisor.aclose()
            return "closed"

        assert await supervisor.spawn(closer(), name="closer") == "closed"
        assert other.cancelled()

    asyncio.run(scenario())
