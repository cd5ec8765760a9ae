"""The transcriber writes the history and search index with each final and at each call's end."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from shared import keys
from shared.errors import AsrError
from shared.schema import CallMeta, TranscriptEvent
from tests.transcriber.dgutil import settings
from tests.transcriber.scripted import serve_call

SID = "CA00000000000000000000000000000078"


async def test_finals_and_the_end_land_in_the_index_with_the_failure(
    redis: aioredis.Redis,
) -> None:
    """Each final's words → cs:words:<w> (scored by started_at, with a TTL); the end → recent, and
    meta `failure` = asr_failed when recognition failed (also in call_ended)."""
    meta = CallMeta(call_sid=SID, started_at=1_800_000_000.5, **{"from": "+15550001111"})
    await redis.hset(keys.meta(SID), mapping=meta.to_redis())
    final = TranscriptEvent(
        call_sid=SID, segment=0, channel=0, speaker="caller", is_final=True,
        start=0.5, end=2.0, text="Thursday at three works, THURSDAY!",
    )  # fmt: skip
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    refused = AsrError("refused", retryable=False)  # after the final: recognition failed
    await serve_call(redis, SID, [final], settings(), fail_with=refused)
    assert await redis.zscore(keys.word(keys.tag_of(SID), "thursday"), SID) == meta.started_at
    assert await redis.zscore(keys.word(keys.tag_of(SID), "works"), SID) == meta.started_at
    assert 0 < await redis.ttl(keys.word(keys.tag_of(SID), "three")) <= settings().retention_s
    assert await redis.zscore(keys.recent(keys.tag_of(SID)), SID) == meta.started_at
    assert await redis.hget(keys.meta(SID), "failure") == b"asr_failed"
    async with asyncio.timeout(5):
        while (msg := await events.get_message(ignore_subscribe_messages=True, timeout=1)) is None:
            pass
    await events.aclose()
    assert b'"failure":"asr_failed"' in msg["data"]
