"""The decode queue one Whisper model serves every call of a worker from: finals first, bounded.

Every session of an engine submits its decodes here; ``workers`` threads take them one at a
time, **finals before interims**, each kind first come first served. A final is never
dropped (its session waits for it, and a session's ``send`` applies back-pressure, so the
finals in the queue are bounded by the calls). An interim is worth something only while it is
fresh, so the queue holds at most ``max_interims`` of them: a new one beyond that drops the
oldest queued interim, and one that waited longer than ``interim_max_wait_s`` is dropped when
its turn comes. A dropped interim resolves to None; its session simply publishes no interim
that time.

The queue belongs to no event loop: each submission's result is set on the loop of the task
that submitted it (``call_soon_threadsafe``), so one engine can serve several loops (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shared.errors import AsrError

log = logging.getLogger(__name__)

T = TypeVar("T")

FINAL, INTERIM = 0, 1
"""Priorities: lower is served first."""


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    queued_at: float = field(compare=False, default=0.0)
    dropped: bool = field(compare=False, default=False)


class DecodeQueue:
    """A priority queue of blocking decode jobs run by ``workers`` daemon threads.

    ``workers``: decodes run at once (give the model as many CTranslate2 workers).
    ``max_interims``: interims queued at most (≥ 1). ``interim_max_wait_s``: an interim queued
    longer than this (s) is dropped unstarted. ``stats`` counts ``finals``, ``interims``,
    ``interims_dropped`` and ``busy_s`` (s of decoding, all workers).
    """

    def __init__(
        self, workers: int, *, max_interims: int = 8, interim_max_wait_s: float = 1.0
    ) -> None:
        self.max_interims = max(1, max_interims)
        self.interim_max_wait_s = interim_max_wait_s
        self.stats = {"finals": 0, "interims": 0, "interims_dropped": 0, "busy_s": 0.0}
        self._heap: list[_Job] = []
        self._interims: list[_Job] = []  # queued interims, oldest first
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"whisper-decode-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    async def final(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (blocking) on a worker thread before any interim; its result.

        Raises:
            AsrError: the queue is shut down. Whatever ``fn`` raises.
        """
        result: T = await self._submit(FINAL, fn)
        return result

    async def interim(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` when no final waits; None if it was dropped (queue full or stale).

        Raises:
            AsrError: the queue is shut down. Whatever ``fn`` raises.
        """
        result: T | None = await self._submit(INTERIM, fn)
        return result

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones fail with AsrError; running decodes finish in the background."""
        with self._cond:
            self._closed = True
            jobs, self._heap, self._interims = self._heap, [], []
            self._cond.notify_all()
        for job in jobs:
            _resolve(job, error=AsrError("the whisper engine is closed", retryable=False))

    @property
    def depth(self) -> int:
        """Jobs waiting (not running)."""
        with self._cond:
            return sum(not j.dropped for j in self._heap)

    async def _submit(self, priority: int, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(priority, next(self._seq), fn, loop.create_future(), loop, time.monotonic())
        dropped = None
        with self._cond:
            if self._closed:
                raise AsrError("the whisper engine is closed", retryable=False)
            heapq.heappush(self._heap, job)
            if priority == INTERIM:
                self._interims.append(job)
                if len(self._interims) > self.max_interims:
                    dropped = self._interims.pop(0)
                    dropped.dropped = True
                    self.stats["interims_dropped"] += 1
            self._cond.notify()
        if dropped is not None:
            _resolve(dropped, value=None)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.dropped = True  # not started yet: skipped; running: its result is ignored
            raise

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = heapq.heappop(self._heap)
                if job.priority == INTERIM and job in self._interims:
                    self._interims.remove(job)
                if job.dropped:
                    continue
                stale = (
                    job.priority == INTERIM
                    and time.monotonic() - job.queued_at > self.interim_max_wait_s
                )
                if stale:
                    self.stats["interims_dropped"] += 1
            if stale:
                _resolve(job, value=None)
                continue
            started = time.monotonic()
            try:
                value = job.fn()
            except Exception as exc:  # handed to the submitter, which decides
                _resolve(job, error=exc)
            else:
                _resolve(job, value=value)
            with self._cond:
                self.stats["busy_s"] += time.monotonic() - started
                self.stats["finals" if job.priority == FINAL else "interims"] += 1


def _resolve(job: _Job, *, value: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the submitter's loop is closed: nobody waits
        job.loop.call_soon_threadsafe(settle)
