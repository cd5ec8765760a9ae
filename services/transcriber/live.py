"""A worker's live events, published in order and in pipelines across its calls.

Every interim result, every final (after its history entry is stored), and the ``error`` event
of a failed call go to ``cs:{p}:<sid>:live`` by PUBLISH (docs/protocol.md, "Pub/sub channels").
One PUBLISH round trip per result cost the worker an eighth of its CPU at 100 calls (py-spy
under benchmarks/load.py: 270 results a second); :class:`LivePublisher` queues them without
awaiting and writes what accumulated over ``linger_s`` in one non-transactional pipeline.

Order: one FIFO for the whole worker, so each call's events keep the order the call produced
them in (an interim never overtakes the final that replaces it). :meth:`flush` waits until what
was queued before it is written: a call publishes its end only after that.

Failures: a pipeline that fails is retried with backoff and jitter; entries that still fail
after ``attempts`` tries are dropped with one warning line per batch. That loses nothing a
client cannot recover: interims are superseded, and finals are in the history stream, which a
client reads again with ``since`` when the gateway tells it ``reconnecting``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import redis.asyncio as aioredis

from shared.cluster import publish
from shared.retry import REDIS_FAILURES, Backoff

log = logging.getLogger(__name__)


class LivePublisher:
    """Queues ``(channel, payload)`` PUBLISHes and writes them in order, in pipelines.

    Args:
        redis: the worker's client.
        linger_s: once woken by a first event, how long to wait for more before writing, s
            (adds at most this much latency; 5 ms).
        batch_max: PUBLISHes per pipeline at most.
        max_pending: events queued at most; beyond it the oldest are dropped (Redis is gone
            for long: each call's next final or its end tells clients more than the backlog).
        attempts: tries per batch before its events are dropped.

    Attributes:
        published: events written. dropped: events given up on.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        linger_s: float = 0.005,
        batch_max: int = 512,
        max_pending: int = 100_000,
        attempts: int = 5,
    ) -> None:
        self._redis = redis
        self._linger_s = linger_s
        self._batch_max = batch_max
        self._attempts = attempts
        self._queue: deque[tuple[str, str]] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._written = 0  # events written or dropped, ever: flush() waits on this count
        self._queued = 0  # events queued, ever
        self._progress = asyncio.Event()
        self._running = False
        self.published = 0
        self.dropped = 0

    def publish(self, channel: str, payload: str) -> None:
        """Queue one PUBLISH (never awaits)."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            self._written += 1  # the oldest entry falls out of the deque
        self._queue.append((channel, payload))
        self._queued += 1
        self._wake.set()

    async def flush(self) -> None:
        """Return once every event queued before this call has been written (or dropped);
        at once when :meth:`run` is not running (nothing would write them)."""
        target = self._queued
        while self._running and self._written < target:
            self._progress.clear()
            await self._progress.wait()

    async def run(self) -> None:
        """Write queued events until cancelled; never raises on Redis failures."""
        queue = self._queue
        self._running = True
        try:
            await self._loop(queue)
        finally:
            self._running = False
            self._progress.set()

    async def _loop(self, queue: deque[tuple[str, str]]) -> None:
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                if self._linger_s > 0:
                    await asyncio.sleep(self._linger_s)
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._batch_max))]
            await self._write(batch)
            self._written += len(batch)
            self._progress.set()

    async def _write(self, batch: list[tuple[str, str]]) -> None:
        backoff = Backoff()
        for attempt in range(1, self._attempts + 1):
            try:
                pipe = self._redis.pipeline(transaction=False)
                for channel, payload in batch:
                    publish(pipe, channel, payload)  # SPUBLISH on a cluster
                try:
                    await pipe.execute()
                finally:
                    await pipe.reset()
            except REDIS_FAILURES as exc:
                if attempt == self._attempts:
                    self.dropped += len(batch)
                    log.warning(
                        "live events not published",
                        extra={"events": len(batch), "error": exc.__class__.__name__},
                    )
                    return
                await backoff.wait()
                continue
            self.published += len(batch)
            return
