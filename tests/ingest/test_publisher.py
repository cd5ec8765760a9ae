"""The publisher: bounded buffer, control entries never dropped, retries write nothing twice."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from services.ingest.publisher import Publisher
from shared import keys
from shared.schema import AudioFrame, CallMeta

from .conftest import WAIT_S


def frame(t_ms: int) -> AudioFrame:
    return AudioFrame(t_ms=t_ms, pcmu=bytes([t_ms % 256]) * 1600)


async def drain(pub: Publisher) -> None:
    pub.close()
    async with asyncio.timeout(WAIT_S):
        await pub.run()


async def test_full_buffer_drops_audio_but_never_control_entries(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """With room for 2 frames, 3 of 5 are dropped, counted, logged once; start and eof are kept."""
    caplog.set_level(logging.WARNING)
    pub = Publisher(redis, buffer_frames=2, audio_maxlen=100, retention_s=60)
    pub.submit_start(CallMeta(call_sid="CA1", tracks=["inbound"], channels=1))
    accepted = [pub.submit_frame("CA1", frame(t)) for t in range(0, 500, 100)]
    assert accepted == [True, True, False, False, False]
    assert pub.dropped_for("CA1") == 3
    assert pub.submit_eof("CA1", 500) == 3
    await drain(pub)
    entries = await redis.xrange(keys.audio("CA1"))
    got = [AudioFrame.from_redis(fields) for _, fields in entries]
    assert got == [frame(0), frame(100), AudioFrame(t_ms=500, eof=True)]
    assert await redis.xlen(keys.JOBS) == 1
    assert 0 < await redis.ttl(keys.audio("CA1")) <= 60
    assert pub.dropped_frames == 3 and pub.written_frames == 2
    drops = [r for r in caplog.records if r.getMessage() == "write buffer full, dropping audio"]
    assert len(drops) == 1


async def test_rewriting_a_batch_adds_no_duplicate_frames(redis: aioredis.Redis) -> None:
    """A batch written again (as after a lost reply) leaves each frame in the stream once."""
    for _ in range(2):
        pub = Publisher(redis, buffer_frames=10, audio_maxlen=100, retention_s=60)
        for t in (0, 100, 200):
            pub.submit_frame("CA2", frame(t))
        await drain(pub)
    entries = await redis.xrange(keys.audio("CA2"))
    assert [AudioFrame.from_redis(f).t_ms for _, f in entries] == [0, 100, 200]
