"""The worker's audio reader: one XREAD BLOCK per round over the audio of its owned calls.

One :class:`AudioReader` per partition group (:func:`shared.cluster.partition_groups`: all
twelve partitions on a single Redis, one on a cluster). Each round reads the audio streams
``cs:{p}:<sid>:audio`` of every call in the worker's registry whose partition is in the group,
from each call's last ID (https://redis.io/docs/latest/commands/xread/). A call whose queue is
full is left out of the round until it drains, so backpressure stays in Redis. With no call
wanting audio the reader waits for its wake event (a call sets it when it becomes ready and
whenever its queue has room again) or ``read_block_ms``, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from typing import Protocol

import redis.asyncio as aioredis
from redis.typing import KeyT, StreamIdT

from shared import keys
from shared.redisconn import as_text
from shared.replies import batches
from shared.retry import REDIS_FAILURES, Backoff, cmd

log = logging.getLogger(__name__)

READ_COUNT = 10
"""Audio entries one XREAD round takes per call at most (1 s of 100 ms frames)."""

ROUND_MIN_S = 0.02
"""Shortest time between the starts of two audio XREAD rounds, s. Without it a worker serving
many calls reads as soon as any one frame lands, one round trip per frame (1,000 a second at 100
calls, a sixth of the worker's CPU under benchmarks/load.py); with it one round serves every
call's frames of the last 20 ms, at the cost of at most 20 ms of latency."""


class AudioSink(Protocol):
    """What the reader needs of a call (:class:`services.transcriber.call.CallPipeline`)."""

    @property
    def last_id(self) -> str:
        """ID of the last audio entry delivered (``"0-0"`` before the first): the next read
        starts after it."""
        ...

    def wants_audio(self, count: int) -> bool:
        """True when the call can take ``count`` more entries now."""
        ...

    def deliver(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Take one audio entry (ID and fields as XREAD returns them)."""
        ...


class AudioReader:
    """Reads the audio of the calls of ``calls`` whose partition tag is in ``tags``.

    Args:
        redis: the worker's client.
        calls: the worker's call registry, ``{callSid: call}``; read afresh every round, never
            written here, so calls the worker adds or removes are picked up by the next round.
        tags: the partition tags of one group (one multi-key XREAD can serve them all).
        wake: set when a call of these partitions may want audio (it became ready, or its
            queue has room again); the reader clears it before it waits.
        block_ms: XREAD BLOCK, ms, and the longest wait for ``wake`` (``read_block_ms``).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        calls: Mapping[str, AudioSink],
        tags: Collection[str],
        wake: asyncio.Event,
        block_ms: int,
    ) -> None:
        self.redis = redis
        self.calls = calls
        self.tags = frozenset(tags)
        self.wake = wake
        self.block_ms = block_ms

    async def run(self) -> None:
        """Read rounds until cancelled: at most :data:`READ_COUNT` entries per call a round,
        rounds at least :data:`ROUND_MIN_S` apart. Each entry goes to its call's
        :meth:`AudioSink.deliver`, unless the call left the registry or was re-created since
        the round started. Redis failures are logged and retried with backoff; never raises
        but :class:`asyncio.CancelledError`."""
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while True:
            streams: dict[KeyT, StreamIdT] = {
                keys.audio(sid): c.last_id
                for sid, c in self.calls.items()
                if keys.tag_of(sid) in self.tags and c.wants_audio(READ_COUNT)
            }
            if not streams:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.block_ms / 1000):
                        await self.wake.wait()
                continue
            started = loop.time()
            try:
                resp = batches(
                    await cmd(self.redis.xread(streams, count=READ_COUNT, block=self.block_ms))
                )
                backoff.reset()
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", loop="audio")
                continue
            for stream, entries in resp or []:
                call = self.calls.get(keys.sid_of(stream))
                if call is None or call.last_id != streams.get(as_text(stream)):
                    continue  # the call ended or was re-created meanwhile
                for entry_id, fields in entries:
                    call.deliver(entry_id, fields)
            rest = started + ROUND_MIN_S - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)
