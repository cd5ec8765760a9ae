"""Three asyncio patterns written once: cancel a task and wait for it, retry with backoff, and run
until a signal.

Each had hand-written copies that differed in the detail that matters:

- :func:`cancel_and_wait` re-raises the *caller's* cancellation. ``task.cancel()`` followed by
  ``with suppress(CancelledError): await task`` also swallows a cancellation aimed at the caller
  while it waits, so a shutdown or a hand-over that cancels the caller would find it still
  running.
- :func:`retry` is the "until it works" loop around :class:`shared.retry.Backoff` (its delays,
  jitter and rate-limited failure log); it adds no backoff logic of its own.
- :func:`run_until_signal` gives every command one behaviour: the first SIGINT/SIGTERM asks
  for a graceful stop, the next one stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.retry import REDIS_FAILURES, Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_INTERRUPTED = 130
"""Exit status of a run cut short by a signal, or by Ctrl-C before the handlers were set
(128 + SIGINT, as shells report it)."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals :func:`run_until_signal` handles."""


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` (a task or future) and wait until it has finished.

    The task's own :class:`asyncio.CancelledError` is absorbed. If the caller is cancelled while
    it waits (``asyncio.current_task().cancelling()``), the cancellation is re-raised, not
    swallowed. A task already done is not cancelled; an exception it raised (before or while
    winding down) is raised here. It waits as long as the task's clean-up takes: bound that
    clean-up inside the task, or wrap this call in :func:`asyncio.timeout`.

    Raises:
        asyncio.CancelledError: the caller itself is being cancelled.
        Exception: whatever ``task`` raised other than its cancellation.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def retry(
    op: Callable[[], Awaitable[T]],
    logger: logging.Logger,
    msg: str,
    *,
    backoff: Backoff | None = None,
    failures: tuple[type[BaseException], ...] = REDIS_FAILURES,
    **extra: object,
) -> T:
    """Await ``op()`` until it returns, and return what it returned.

    A failure (an exception in ``failures``, Redis's by default) is logged and waited out by
    :meth:`Backoff.retry_after` with ``logger``, ``msg`` and ``extra`` (a warning per outage,
    delays doubling with jitter); then ``op`` runs again. A success resets ``backoff``, so a loop
    that passes the same ``backoff`` to every round (``while True: await retry(one_round, …,
    backoff=b)``) starts its next outage from the base delay. ``op`` must be safe to repeat.
    It never gives up: bound it with :func:`asyncio.timeout` if it must.

    Raises:
        Exception: any exception of ``op`` not in ``failures``, at once.
        asyncio.CancelledError: on cancellation, including during a backoff wait.
    """
    if backoff is None:
        backoff = Backoff()
    while True:
        try:
            result = await op()
        except failures as exc:
            await backoff.retry_after(exc, logger, msg, **extra)
            continue
        backoff.reset()
        return result


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` on a new event loop with SIGINT and SIGTERM wired to ``stop``; returns
    the exit status.

    The first signal sets ``stop``: ``main`` winds down (within its grace periods) and what it
    returns is the status. A signal that finds ``stop`` already set (the second one, or one
    after ``main`` set ``stop`` itself) stops at once: ``main`` is cancelled, its ``finally``
    blocks run but no grace period is waited out, and the status is :data:`EXIT_INTERRUPTED`.
    A Ctrl-C before the handlers are installed also returns :data:`EXIT_INTERRUPTED`, without a
    traceback. Call it from the main thread (signal handlers live there); the loop is whatever
    the current event loop policy makes (uvloop after :func:`shared.service.install_fast_loop`).
    """

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # asyncio.run runs runner() as a task

        def on_signal(sig: signal.Signals) -> None:
            at_once = stop.is_set()
            log.info("signal", extra={"signal": sig.name, "stop": "now" if at_once else "graceful"})
            if at_once:
                task.cancel()
            stop.set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            return EXIT_INTERRUPTED
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
