"""Reading what the transcriber wrote: active calls, a call's metadata, its history.

Thin async helpers over a ``redis.asyncio.Redis`` (bytes responses); every call is bounded by
``timeout_s`` so a hung Redis surfaces as :class:`shared.errors.RedisUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import keys
from shared.errors import RedisUnavailable
from shared.redisconn import stream_id_tuple
from shared.replies import StreamEntry, entries
from shared.schema import CallList, CallMeta

HISTORY_PAGE = 200
"""Entries read per XRANGE while replaying history."""

StreamId = tuple[int, int]


def format_id(entry_id: StreamId) -> str:
    """``(1700000000000, 3)`` → ``"1700000000000-3"``."""
    return f"{entry_id[0]}-{entry_id[1]}"


@asynccontextmanager
async def redis_op(timeout_s: float) -> AsyncIterator[None]:
    """Bound one Redis round trip by ``timeout_s``; failures become :class:`RedisUnavailable`."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise RedisUnavailable(f"redis: {exc.__class__.__name__}") from exc


async def call_info(r: aioredis.Redis, call_sid: str, timeout_s: float) -> tuple[bool, int, bool]:
    """``(known, channels, ended)`` of a call: known = active or has metadata.

    ``channels`` defaults to 2 when the metadata is missing. Raises RedisUnavailable.
    """
    async with redis_op(timeout_s), r.pipeline(transaction=False) as pipe:
        pipe.sismember(keys.active(keys.tag_of(call_sid)), call_sid)
        pipe.hmget(keys.meta(call_sid), ["call_sid", "channels", "status"])
        active, (meta_sid, channels, status) = await pipe.execute()
    known = bool(active) or meta_sid is not None
    try:
        n = int(channels) if channels else 2
    except ValueError:
        n = 2
    return known, n, status == b"ended"


async def partitions_reachable(r: aioredis.Redis, timeout_s: float) -> None:
    """SCARD every partition's active set in one pipeline: on a cluster every master answers
    (a PING answered by one node says nothing of the others). Raises RedisUnavailable."""
    async with redis_op(timeout_s), r.pipeline(transaction=False) as pipe:
        for tag in keys.TAGS:
            pipe.scard(keys.active(tag))
        await pipe.execute()


async def active_sids(r: aioredis.Redis, timeout_s: float) -> list[str]:
    """The callSids in every partition's ``cs:{p}:calls:active``, sorted (one pipeline of
    SMEMBERS; on a cluster redis-py sends each node its own). Raises RedisUnavailable."""
    async with redis_op(timeout_s), r.pipeline(transaction=False) as pipe:
        for tag in keys.TAGS:
            pipe.smembers(keys.active(tag))
        sets = await pipe.execute()
    return sorted(m.decode() if isinstance(m, bytes) else m for s in sets for m in s)


async def active_calls(r: aioredis.Redis, timeout_s: float) -> list[CallMeta]:
    """Metadata of every active call (calls without metadata get a bare one). Raises RedisUnavailable."""
    sids = await active_sids(r, timeout_s)
    if not sids:
        return []
    async with redis_op(timeout_s), r.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.hgetall(keys.meta(sid))
        hashes = await pipe.execute()
    calls = []
    for sid, fields in zip(sids, hashes, strict=True):
        try:
            calls.append(CallMeta.from_redis(fields))
        except ValueError:
            calls.append(CallMeta(call_sid=sid, started_at=0.0))
    return calls


async def call_meta(r: aioredis.Redis, call_sid: str, timeout_s: float) -> CallMeta | None:
    """The call's metadata, or None when unknown. Raises RedisUnavailable."""
    async with redis_op(timeout_s):
        fields = await r.hgetall(keys.meta(call_sid))
        active = await r.sismember(keys.active(keys.tag_of(call_sid)), call_sid) if not fields else False
    try:
        return CallMeta.from_redis(fields)
    except ValueError:
        return CallMeta(call_sid=call_sid, started_at=0.0) if active else None


async def history_page(
    r: aioredis.Redis,
    call_sid: str,
    after: StreamId | None,
    timeout_s: float,
    count: int = HISTORY_PAGE,
) -> list[StreamEntry]:
    """Up to ``count`` finals of the call's history strictly after ``after`` (None = from the start).

    Raises RedisUnavailable.
    """
    low = "-" if after is None or after == (0, 0) else "(" + format_id(after)
    async with redis_op(timeout_s):
        return entries(await r.xrange(keys.transcript(call_sid), min=low, max="+", count=count))


async def last_history_id(r: aioredis.Redis, call_sid: str, timeout_s: float) -> StreamId:
    """ID of the newest final in the call's history, ``(0, 0)`` when empty. Raises RedisUnavailable."""
    async with redis_op(timeout_s):
        last = entries(await r.xrevrange(keys.transcript(call_sid), count=1))
    return stream_id_tuple(last[0][0]) if last else (0, 0)


def calls_message(calls: list[CallMeta]) -> str:
    """The ``calls`` answer to ``list`` (:class:`shared.schema.CallList`), as JSON."""
    return CallList(calls=calls).to_json()
