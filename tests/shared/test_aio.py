"""shared.aio: cancel-and-wait keeps the caller's cancellation, retry backs off, signals stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from shared.aio import EXIT_INTERRUPTED, cancel_and_wait, retry, run_until_signal
from shared.retry import Backoff

WAIT_S = 10.0
"""Upper bound for waits that end on an event; only reached when the code under test is broken."""


async def test_cancel_and_wait_cancels_and_waits_for_the_clean_up() -> None:
    """The task is cancelled, its clean-up has run when the call returns, nothing is raised."""
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # clean-up that itself awaits
            cleaned.set()

    task = asyncio.create_task(work())
    await asyncio.sleep(0)  # let it start
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()


async def test_cancel_and_wait_reraises_the_callers_cancellation() -> None:
    """A caller cancelled while it waits for the task's clean-up ends cancelled, not returning."""
    in_cleanup, returned = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            in_cleanup.set()
            await asyncio.Event().wait()  # clean-up that needs a second cancel to end
            raise

    async def caller() -> None:
        inner = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        await cancel_and_wait(inner)
        returned.set()

    outer = asyncio.create_task(caller())
    async with asyncio.timeout(WAIT_S):
        await in_cleanup.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT_S):
            await outer
    assert outer.cancelled() and not returned.is_set()


async def test_cancel_and_wait_raises_what_the_task_raised() -> None:
    """A task that failed (here before the cancel) has its exception raised to the caller."""

    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.wait({task})
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task)


async def test_retry_backs_off_through_failures_then_returns_and_resets() -> None:
    """Two Redis-like failures are retried after a backoff; the result comes back, failures reset."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("down")
        return "ok"

    backoff = Backoff(base_s=0.001, cap_s=0.001)
    logger = logging.getLogger("test.aio")
    assert await retry(flaky, logger, "redis unavailable", backoff=backoff) == "ok"
    assert calls == 3 and backoff.failures == 0


async def test_retry_lets_other_errors_through_at_once() -> None:
    """An exception outside ``failures`` is raised on the first try, not retried."""
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await retry(broken, logging.getLogger("test.aio"), "redis unavailable")
    assert calls == 1


def test_first_signal_stops_gracefully_with_mains_status() -> None:
    """SIGTERM sets ``stop``; ``main`` winds down and its return value is the exit status."""

    async def main(stop: asyncio.Event) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            await stop.wait()
        return 7

    assert run_until_signal(main) == 7


def test_second_signal_cancels_main_and_exits_130() -> None:
    """A signal while ``stop`` is already set cancels ``main`` (its finally runs): status 130."""
    finished: list[str] = []

    async def main(stop: asyncio.Event) -> int:
        os.kill(os.getpid(), signal.SIGINT)
        async with asyncio.timeout(WAIT_S):
            await stop.wait()
        try:
            os.kill(os.getpid(), signal.SIGINT)  # impatient: the graceful stop is too slow
            async with asyncio.timeout(WAIT_S):
                await asyncio.Event().wait()  # a wind-down that would never end
        finally:
            finished.append("finally")
        return 0

    assert run_until_signal(main) == EXIT_INTERRUPTED
    assert finished == ["finally"]
