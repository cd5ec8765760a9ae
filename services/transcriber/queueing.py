"""A call that waits for a transcriber is never held silently (docs/architecture.md, "Capacity").

* Its status says so. Ingest writes ``status=queued`` in the call's meta at start; the worker
  that claims it sets ``live`` and publishes ``call_updated`` on ``cs:calls:events`` in one
  MULTI (:func:`set_status`), so ``GET /v1/calls``, ``/v1/ws`` ``calls`` replies and list
  watchers see the change. A worker stopping gracefully sets its unfinished calls back to
  ``queued`` before handing their jobs over.
* The worker that is full while jobs wait logs one warning when that starts and one line when it
  ends (:class:`Saturation`), never one per loop.
* The number of waiting jobs is a metric (``callscribe_transcriber_calls_queued``): the jobs of
  the group never delivered to any worker (:func:`waiting_jobs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared import keys
from shared.cluster import publish_call_event
from shared.retry import cmd
from shared.schema import CallMeta, CallStatus, CallUpdated

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
"""How often a full worker asks Redis how many jobs wait, s."""


async def waiting_jobs(redis: aioredis.Redis) -> int:
    """Jobs in the ``cs:{p}:jobs`` streams not yet delivered to any worker (calls waiting to start).

    One non-transactional pipeline of XLEN and XINFO GROUPS per partition (on a cluster redis-py
    sends each node its own); the partitions' counts are added.

    Redis 7's ``XINFO GROUPS`` ``lag`` (https://redis.io/docs/latest/commands/xinfo-groups/);
    when it is null (Redis cannot tell after some deletions) or absent (Redis 6.2, fakeredis),
    ``XLEN`` minus the group's pending entries, which is the same number because every job is
    deleted when it is acknowledged. 0 when the group does not exist yet.

    Raises:
        RedisError, OSError: Redis failed.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for tag in keys.TAGS:
            pipe.xlen(keys.jobs(tag))
            pipe.xinfo_groups(keys.jobs(tag))
        replies = await cmd(pipe.execute(raise_on_error=False))
    total = 0
    for length, groups in zip(replies[::2], replies[1::2], strict=True):
        if isinstance(length, Exception):
            raise length
        if isinstance(groups, ResponseError):  # no such key: no job was ever written there
            continue
        if isinstance(groups, Exception):
            raise groups
        total += _waiting(int(length), groups)
    return total


def _waiting(length: int, groups: list[dict[str, Any]]) -> int:
    """Undelivered jobs of one stream of ``length`` entries, from its XINFO GROUPS reply."""
    for group in groups:
        name = group.get("name")
        if (name.decode() if isinstance(name, bytes) else name) != keys.JOBS_GROUP:
            continue
        lag = group.get("lag")
        if isinstance(lag, int):
            return max(0, lag)
        return max(0, length - int(group.get("pending") or 0))
    return length


async def set_status(redis: aioredis.Redis, metas: Sequence[CallMeta], status: CallStatus) -> None:
    """Set each call's ``status`` in its meta hash and publish ``call_updated`` for it: one
    MULTI per partition (on a cluster a transaction stays in one slot).

    Raises RedisError or OSError when Redis failed (the caller may retry: every write is
    idempotent).
    """
    if not metas:
        return
    by_tag: dict[str, list[CallMeta]] = {}
    for meta in metas:
        by_tag.setdefault(keys.tag_of(meta.call_sid), []).append(meta)
    for group in by_tag.values():
        async with redis.pipeline(transaction=True) as pipe:
            for meta in group:
                updated = meta.model_copy(update={"status": status})
                pipe.hset(keys.meta(meta.call_sid), "status", status)
                publish_call_event(pipe, meta.call_sid, CallUpdated(call=updated).to_json())
            await cmd(pipe.execute())
    for meta in metas:
        log.info("call status", extra={"call_sid": meta.call_sid, "status": status})


class Saturation:
    """Whether a worker is full while jobs wait, for its log and its ``calls_queued`` gauge.

    ``queued``: jobs waiting for any worker, as last seen by this one (0 while it has room and
    its last read took fewer jobs than it asked for, i.e. none were left).
    """

    def __init__(self, consumer: str, max_calls: int) -> None:
        self.consumer = consumer
        self.max_calls = max_calls
        self.queued = 0
        self._since: float | None = None  # monotonic start of the current saturation
        self._checked_at = float("-inf")

    async def full(self, redis: aioredis.Redis) -> None:
        """The worker has no free slot: count the waiting jobs (at most every
        :data:`CHECK_INTERVAL_S`) and log a warning when jobs start waiting.

        Raises:
            RedisError, OSError: Redis failed.
        """
        now = time.monotonic()
        if now - self._checked_at < CHECK_INTERVAL_S:
            return
        self._checked_at = now
        self.queued = await waiting_jobs(redis)
        if self.queued > 0 and self._since is None:
            self._since = now
            log.warning(
                "at capacity: calls wait for a worker",
                extra={
                    "consumer": self.consumer,
                    "max_calls": self.max_calls,
                    "queued": self.queued,
                },
            )
        elif self.queued == 0:
            self._ended()

    def drained(self) -> None:
        """A read for free slots found no more waiting jobs."""
        self.queued = 0
        self._checked_at = float("-inf")
        self._ended()

    def _ended(self) -> None:
        if self._since is not None:
            log.info(
                "calls no longer wait",
                extra={
                    "consumer": self.consumer,
                    "waited_s": round(time.monotonic() - self._since, 3),
                },
            )
            self._since = None
