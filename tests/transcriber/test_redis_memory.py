"""Issue 9: audio is a trimmed buffer, a stopped audio stream is announced, a lost call is rebuilt."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from services.transcriber.retention import trim_floor
from services.transcriber.stall import AudioWatch, Stillness
from shared import keys
from shared.schema import AudioFrame
from tests.fakes.deepgram import FakeDeepgram
from tests.redis_server import RedisServer
from tests.transcriber.dgutil import call_audio, dentist, frames
from tests.transcriber.test_metrics import worker_on_port
from tests.transcriber.test_worker import (
    WAIT_S,
    add_audio,
    add_call,
    expected,
    history,
    sid_of,
    wait_messages,
    worker,
)


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_audio_watch_says_stopped_once_then_ends_and_a_frame_resumes() -> None:
    """Still for stall_s: STOPPED once, then WAIT, ENDED at idle_s; a frame after a stop resumes."""
    clock = FakeClock()
    watch = AudioWatch(stall_s=5.0, idle_s=60.0, clock=clock)
    assert watch.timeout_s() == 5.0
    clock.now += 5.0
    assert watch.timed_out() is Stillness.STOPPED
    assert watch.timeout_s() == 55.0
    clock.now += 10.0
    assert watch.timed_out() is Stillness.WAIT
    assert watch.heard() is True  # audio_resumed is due
    assert watch.heard() is False
    clock.now += 60.0
    assert watch.timed_out() is Stillness.ENDED


def test_audio_watch_restarts_its_clock_when_redis_holds_unread_audio() -> None:
    """alive() (audio not yet delivered, or Redis not answering) pushes both deadlines back."""
    clock = FakeClock()
    watch = AudioWatch(stall_s=5.0, idle_s=60.0, clock=clock)
    clock.now += 4.0
    watch.alive()
    assert watch.timeout_s() == 5.0
    assert AudioWatch(stall_s=90.0, idle_s=60.0, clock=clock).stall_s == 60.0


def test_trim_floor_keeps_the_replay_window_before_the_checkpoint() -> None:
    """MINID = checkpoint ms − window; nothing to trim before a checkpoint or near the start."""
    assert trim_floor("25000-1", 10.0) == "15000"
    assert trim_floor("1700000012345-0", 2.5) == "1700000009845"
    assert trim_floor("0-0", 10.0) is None
    assert trim_floor("5000-1", 10.0) is None
    assert trim_floor("bogus", 1.0) is None


async def add_ingest_audio(
    redis: aioredis.Redis, sid: str, audio: bytes, *, from_s: float, to_s: float | None = None
) -> None:
    """Frames of ``audio`` between ``from_s`` and ``to_s`` with ingest's IDs ``<t_ms>-1``; the
    eof when ``to_s`` is None."""
    pipe = redis.pipeline(transaction=False)
    end = 0
    for t_ms, pcmu in frames(audio):
        end = t_ms + len(pcmu) // 16
        if from_s * 1000 <= t_ms and (to_s is None or t_ms < to_s * 1000):
            pipe.xadd(keys.audio(sid), AudioFrame(t_ms=t_ms, pcmu=pcmu).to_redis(), id=f"{t_ms}-1")  # type: ignore[arg-type]
    if to_s is None:
        pipe.xadd(keys.audio(sid), AudioFrame(t_ms=end, eof=True).to_redis(), id=f"{end}-1")  # type: ignore[arg-type]
    await pipe.execute()


async def test_audio_is_trimmed_behind_the_checkpoint_and_short_lived_after_the_end(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """Mid-call the stream keeps only the replay window before the checkpoint; after the end
    its TTL is AUDIO_REPLAY_S while the transcript keeps RETENTION_S; every final once."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(90)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_ingest_audio(redis, sid, audio, from_s=0.0, to_s=22.0)
    async with (
        FakeDeepgram(script, reference=audio) as fake,
        worker(redis_url, fake.url, audio_replay_s=1.0, retention_s=600),
    ):
        async with asyncio.timeout(WAIT_S):
            while True:  # the checkpoint passes 12 s: the first 100-entry node can go
                resume = await redis.hget(keys.meta(sid), "resume_audio_id")
                if resume and int(resume.split(b"-")[0]) > 12_000:
                    break
                await redis.xread({keys.transcript(sid): "$"}, block=500)
        first = (await redis.xrange(keys.audio(sid), count=1))[0][0]
        assert int(first.split(b"-")[0]) >= 10_000, "audio before the checkpoint was kept"
        assert int(first.split(b"-")[0]) <= int(resume.split(b"-")[0])
        await add_ingest_audio(redis, sid, audio, from_s=22.0)
        await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    assert [(e.channel, e.text) for e in await history(redis, sid)] == expected(script)
    assert await redis.ttl(keys.audio(sid)) in (-2, 0, 1)
    assert 500 < await redis.ttl(keys.transcript(sid)) <= 600
    assert 500 < await redis.ttl(keys.meta(sid)) <= 600


async def test_audio_that_stops_is_announced_and_its_return_too(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """No new audio for audio_stall_s: audio_stopped (with where it stopped); audio again:
    audio_resumed; the call then ends normally, with no failure and every final."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(91)
    live = redis.pubsub()
    await live.subscribe(keys.live(sid), keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, audio, to_s=8.0, eof=False)
    async with (
        FakeDeepgram(script, reference=audio) as fake,
        worker(redis_url, fake.url, audio_stall_s=0.3, audio_idle_s=30.0),
    ):
        seen = await wait_messages(live, {sid}, "audio_stopped")
        await add_audio(redis, sid, audio, from_s=8.0)
        seen += await wait_messages(live, {sid}, "call_ended")
    await live.aclose()
    types = [m["type"] for m in seen]
    stopped = seen[types.index("audio_stopped")]
    assert 7.5 <= float(stopped["at_s"]) <= 8.0  # type: ignore[arg-type]
    assert float(stopped["idle_s"]) >= 0.3  # type: ignore[arg-type]
    assert types.index("audio_stopped") < types.index("audio_resumed") < types.index("end")
    assert types.count("audio_stopped") == 1
    assert (await redis.hget(keys.meta(sid), "failure")) is None
    assert [(e.channel, e.text) for e in await history(redis, sid)] == expected(script)


async def test_call_whose_keys_redis_lost_is_restored_and_ends_well(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """Redis loses everything mid-call (FLUSHALL, as a restart without persistence): the owner
    rebuilds meta, active set and job, tells watchers (data_lost, call_started), the finals
    after the loss are stored once, and the call ends with failure data_lost and TTLs on all
    its keys."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(92)
    live = redis.pubsub()
    await live.subscribe(keys.live(sid), keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, audio, to_s=12.0, eof=False)
    async with (
        FakeDeepgram(script, reference=audio) as fake,
        worker(redis_url, fake.url, consumer="a"),
    ):
        await wait_messages(live, {sid}, "transcript")
        async with asyncio.timeout(WAIT_S):  # every frame written so far has been read
            while fake.connections[0].audio_bytes < 12 * 16000:  # noqa: ASYNC110 (a fake's counter: no event to await)
                await asyncio.sleep(0.02)
        await redis.flushall()
        seen = await wait_messages(live, {sid}, "call_started")
        assert await redis.sismember(keys.active(keys.tag_of(sid)), sid)
        job_id = (await redis.hget(keys.meta(sid), "job_id")).decode()
        pending = await redis.xpending_range(keys.jobs(keys.tag_of(sid)), keys.JOBS_GROUP, "-", "+", 10)
        assert [(p["message_id"].decode(), p["consumer"]) for p in pending] == [(job_id, b"a")]
        await add_audio(redis, sid, audio, from_s=12.0)
        seen += await wait_messages(live, {sid}, "call_ended")
    await live.aclose()
    errors = [m for m in seen if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["data_lost"]
    ended = next(m for m in seen if m["type"] == "call_ended")
    assert ended["call"]["failure"] == "data_lost"  # type: ignore[index]
    stored = [(e.channel, e.text) for e in await history(redis, sid)]
    assert stored and stored == expected(script)[-len(stored) :]
    finals = [m for m in seen if m["type"] == "transcript" and m["is_final"]]
    assert len({m["id"] for m in finals}) == len(finals)
    meta = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.meta(sid))).items()}
    assert meta["status"] == "ended" and meta["failure"] == "data_lost" and meta["from"] == ""
    assert await redis.xlen(keys.jobs(keys.tag_of(sid))) == 0
    assert not await redis.sismember(keys.active(keys.tag_of(sid)), sid)
    call_keys = await redis.keys(f"cs:{{{keys.tag_of(sid)}}}:{sid}:*")
    assert keys.meta(sid).encode() in call_keys
    for key in call_keys:
        assert await redis.ttl(key) > 0, key


async def test_takeover_after_trimming_resumes_from_the_checkpoint(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """With no replay slack (AUDIO_REPLAY_S=0) the stream starts at the checkpoint; a worker
    dying there is taken over from it, and every final is stored exactly once."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(93)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_ingest_audio(redis, sid, audio, from_s=0.0, to_s=20.0)
    async with FakeDeepgram(script, reference=audio) as fake:
        async with worker(redis_url, fake.url, consumer="a", audio_replay_s=0.0) as a:
            async with asyncio.timeout(WAIT_S):
                while True:  # trimmed up to a checkpoint past the first 100-entry node
                    first = (await redis.xrange(keys.audio(sid), count=1))[0][0]
                    if int(first.split(b"-")[0]) >= 10_000:
                        break
                    await redis.xread({keys.transcript(sid): "$"}, block=500)
            a.cancel()  # dies without handing over
        before = await history(redis, sid)
        async with worker(redis_url, fake.url, consumer="b", audio_replay_s=0.0):
            await add_ingest_audio(redis, sid, audio, from_s=20.0)
            await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    finals = await history(redis, sid)
    assert [(e.channel, e.text) for e in finals] == expected(script)
    assert finals[: len(before)] == before
    assert fake.connections[1].offset_s >= 10.0, "the new owner resumed at the checkpoint"


async def test_worker_health_reports_a_redis_outage_while_it_lasts(
    redis_server: RedisServer, redis_url: str
) -> None:
    """/healthz answers 503 redis_unavailable from the first lease round Redis misses, 200 again
    once it is back (a brief restart included, which three lease periods would not show)."""
    async with worker_on_port(redis_url, "ws://127.0.0.1:9/v1/listen", lease_renew_s=0.1) as port:
        url = f"http://127.0.0.1:{port}/healthz"
        async with httpx.AsyncClient(timeout=5.0) as client:
            await until_status(client, url, 200)
            redis_server.kill()
            try:
                body = await until_status(client, url, 503)
            finally:
                redis_server.start()
            assert body["status"] == "redis_unavailable"
            await until_status(client, url, 200)


async def until_status(client: httpx.AsyncClient, url: str, status: int) -> dict[str, object]:
    """GET ``url`` every 20 ms until it answers ``status``; its JSON body."""
    async with asyncio.timeout(WAIT_S):
        while (resp := await client.get(url)).status_code != status:  # noqa: ASYNC110 (polls an HTTP endpoint: no event to await)
            await asyncio.sleep(0.02)
    body: dict[str, object] = resp.json()
    return body
