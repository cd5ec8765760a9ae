"""The publisher: bounded buffer, control entries never dropped, retries write nothing twice."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.ingest.publisher import LIVE_AUDIO_TTL_S, Publisher
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
    assert await redis.xlen(keys.jobs(keys.tag_of("CA1"))) == 1
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


async def test_lost_replies_add_no_second_job_and_no_duplicate_frame(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When Redis applies a start and a frame batch but the replies are lost, retries add nothing."""
    real_pipeline = redis.pipeline
    lost: list[bool] = []

    def pipeline(*args: object, **kwargs: object) -> object:
        pipe = real_pipeline(*args, **kwargs)  # type: ignore[arg-type]
        execute = pipe.execute

        async def execute_then_lose_reply(*a: object, **kw: object) -> object:
            result = await execute(*a, **kw)  # type: ignore[arg-type]
            if len(lost) < 2:  # the start's and the first frame batch's replies
                lost.append(True)
                raise RedisConnectionError("reply lost")
            return result

        pipe.execute = execute_then_lose_reply  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(redis, "pipeline", pipeline)
    pub = Publisher(
        redis, buffer_frames=10, audio_maxlen=100, retention_s=60, backoff_initial_s=0.001
    )
    meta = CallMeta(call_sid="CA3", stream_sid="MZ3", tracks=["inbound"], channels=1)
    pub.submit_start(meta)
    for t in (0, 100):
        pub.submit_frame("CA3", frame(t))
    pub.submit_eof("CA3", 200)
    await drain(pub)
    assert len(lost) == 2
    assert [f[b"call_sid"] for _, f in await redis.xrange(keys.jobs(keys.tag_of("CA3")))] == [b"CA3"]
    assert await redis.smembers(keys.active(keys.tag_of("CA3"))) == {b"CA3"}
    entries = await redis.xrange(keys.audio("CA3"))
    got = [AudioFrame.from_redis(fields) for _, fields in entries]
    assert got == [frame(0), frame(100), AudioFrame(t_ms=200, eof=True)]
    assert pub.written_frames == 2 and pub.pending == 0


async def test_a_new_stream_of_the_same_call_is_started_again(redis: aioredis.Redis) -> None:
    """Only the very same start is skipped: another stream of the call writes its meta and job."""
    pub = Publisher(redis, buffer_frames=10, audio_maxlen=100, retention_s=60)
    pub.submit_start(CallMeta(call_sid="CA4", stream_sid="MZa", tracks=["inbound"], channels=1))
    pub.submit_start(CallMeta(call_sid="CA4", stream_sid="MZb", tracks=["inbound"], channels=1))
    await drain(pub)
    assert await redis.xlen(keys.jobs(keys.tag_of("CA4"))) == 2
    assert await redis.hget(keys.meta("CA4"), "stream_sid") == b"MZb"


async def test_a_streaming_calls_audio_has_a_ttl_before_its_eof(redis: aioredis.Redis) -> None:
    """The first frames set the audio stream's live TTL, so a call whose other keys Redis lost,
    or whose ingest died before its eof, cannot leave audio behind for ever."""
    pub = Publisher(redis, buffer_frames=10, audio_maxlen=100, retention_s=60)
    for t in (0, 100):
        pub.submit_frame("CA4", frame(t))
    await drain(pub)
    assert 60 < await redis.ttl(keys.audio("CA4")) <= LIVE_AUDIO_TTL_S
