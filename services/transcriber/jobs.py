"""The job streams ``cs:{p}:jobs``: a worker's writes to them besides reading (``worker.py``).

Each function works per partition stream: on a Redis Cluster a stream is one hash slot, and a
MULTI here touches one stream only (docs/protocol.md, "``cs:{p}:jobs``").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.transcriber.call import CallPipeline
from services.transcriber.queueing import set_status
from shared import keys
from shared.redisconn import as_text
from shared.retry import REDIS_FAILURES, cmd
from shared.schema import CallStatus

log = logging.getLogger(__name__)

Job = tuple[str, bytes, dict[bytes, bytes] | None]
"""``(stream, entry ID, fields)`` of one job as XREADGROUP gave it."""


async def ensure_groups(redis: aioredis.Redis, streams: Iterable[str]) -> None:
    """Create the ``transcribers`` group on each stream (at ID 0, MKSTREAM) unless it exists.

    Raises:
        RedisError, OSError: Redis failed (BUSYGROUP is not a failure).
    """
    for stream in streams:
        try:
            await cmd(redis.xgroup_create(stream, keys.JOBS_GROUP, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def give_back(redis: aioredis.Redis, jobs: Iterable[Job]) -> None:
    """Re-queue jobs read beyond the worker's free slots (one XREADGROUP over several streams
    returns up to COUNT from each): per job one MULTI adds it anew and acks and deletes the
    worker's copy, so a worker blocked on that partition gets it at once.

    Raises:
        RedisError, OSError: Redis failed (the job stays pending: claimed after claim_idle_ms).
    """
    for stream, job_id, fields in jobs:
        async with redis.pipeline(transaction=True) as pipe:
            if fields:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            pipe.xack(stream, keys.JOBS_GROUP, job_id)
            pipe.xdel(stream, job_id)
            await cmd(pipe.execute())


async def hand_over(
    redis: aioredis.Redis, consumer: str, calls: list[CallPipeline], claim_idle_ms: int
) -> None:
    """Show unfinished calls as ``queued`` and give each a fresh job (best effort, 1 s).

    Per partition, one MULTI adds a new job for each call and acks and deletes ours, so a
    worker blocked in XREADGROUP gets it at once; the new owner takes the call over from its
    checkpoint (``job_id`` in the meta names our job, which no longer exists). A call whose
    end transaction had started may be over: its job is only marked idle for
    ``claim_idle_ms`` (XCLAIM … IDLE; a no-op once the end deleted it). Logs the outcome.
    """
    if not calls:
        return
    try:
        async with asyncio.timeout(1.0):
            # before the jobs can be claimed, so a new owner's "live" cannot come first
            live = [
                c.meta for c in calls if c.meta and c.meta.status is CallStatus.LIVE and not c.ending
            ]
            with contextlib.suppress(*REDIS_FAILURES):  # the hand-over matters more
                await set_status(redis, live, CallStatus.QUEUED)
            by_stream: dict[str, list[CallPipeline]] = {}
            for c in calls:
                by_stream.setdefault(c.store.jobs, []).append(c)
            for stream, group in by_stream.items():
                async with redis.pipeline(transaction=True) as pipe:
                    for c in group:
                        if c.ending:  # it may have ended: only make its job claimable
                            pipe.xclaim(
                                stream,
                                keys.JOBS_GROUP,
                                consumer,
                                min_idle_time=0,
                                message_ids=[c.job_id],
                                idle=claim_idle_ms,
                                justid=True,
                            )
                            continue
                        pipe.xadd(stream, {"call_sid": c.sid})
                        pipe.xack(stream, keys.JOBS_GROUP, c.job_id)
                        pipe.xdel(stream, c.job_id)
                    await cmd(pipe.execute())
    except REDIS_FAILURES as exc:  # TimeoutError is an OSError, so among them
        log.warning(
            "hand-over failed: calls wait for claim_idle_ms",
            extra={"consumer": consumer, "error": exc.__class__.__name__},
        )
        return
    log.info("calls handed over", extra={"consumer": consumer, "calls": len(calls)})


async def renew(
    redis: aioredis.Redis,
    consumer: str,
    calls: Iterable[CallPipeline],
    lease_renew_s: float,
    max_calls: int,
) -> set[str]:
    """Re-claim the pending jobs of ``calls`` (one XPENDING and one XCLAIM per stream); return
    the IDs of every job still pending under ``consumer`` in those streams (a call whose job is
    not among them was taken by another worker, or lost by Redis:
    :func:`services.transcriber.recovery.audit` tells which).

    Raises:
        RedisError, OSError: Redis failed.
    """
    by_stream: dict[str, dict[str, CallPipeline]] = {}
    for c in calls:
        if not c.ended:
            by_stream.setdefault(c.store.jobs, {})[c.job_id] = c
    pending_ids: set[str] = set()
    for stream, owned in by_stream.items():
        pending: list[dict[str, Any]] = await cmd(
            redis.xpending_range(
                stream,
                keys.JOBS_GROUP,
                min="-",
                max="+",
                count=2 * max_calls + 10,
                consumername=consumer,
            )
        )
        mine = {as_text(p["message_id"]) for p in pending}
        pending_ids |= mine
        keep = [jid for jid in owned if jid in mine]
        if keep:
            await cmd(
                redis.xclaim(
                    stream,
                    keys.JOBS_GROUP,
                    consumer,
                    # not 0: a job another worker claimed since our XPENDING has idle ~0,
                    # and re-claiming it would make both serve the call; ours idle ~lease
                    min_idle_time=int(lease_renew_s * 500),
                    message_ids=[*keep],
                    justid=True,
                )
            )
    return pending_ids
