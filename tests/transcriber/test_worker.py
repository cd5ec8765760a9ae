"""The transcriber worker with a real redis-server and the fake Deepgram server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis

from services.transcriber.app import run
from services.transcriber.call import MAX_DELIVERIES, CallPipeline
from services.transcriber.deepgram import DeepgramEngine
from services.transcriber.worker import Worker
from shared import keys
from shared.redisconn import connect
from shared.schema import AudioFrame, CallMeta, TranscriptEvent
from tests.fakes.deepgram import FakeDeepgram, Turn
from tests.partitions import job_count, pending_count
from tests.transcriber.dgutil import call_audio, dentist, frames, settings

WAIT_S = 15.0


def jobs_of(sid: str) -> str:
    """The job stream of the call's partition."""
    return keys.jobs(keys.tag_of(sid))


def sid_of(n: int) -> str:
    """A call SID for test call ``n``."""
    return f"CA{n:032d}"


async def add_call(redis: aioredis.Redis, sid: str, *, channels: int = 2) -> None:
    """What ingest does at ``start``: meta, active set, one job."""
    tracks = ["inbound", "outbound"][:channels]
    meta = CallMeta(call_sid=sid, stream_sid="MZ1", tracks=tracks, channels=channels)
    await redis.hset(keys.meta(sid), mapping=meta.to_redis())  # type: ignore[arg-type]
    await redis.sadd(keys.active(keys.tag_of(sid)), sid)
    await redis.xadd(jobs_of(sid), {"call_sid": sid})


async def add_audio(
    redis: aioredis.Redis,
    sid: str,
    audio: bytes,
    *,
    from_s: float = 0.0,
    to_s: float | None = None,
    eof: bool = True,
) -> None:
    """Append the frames of ``audio`` between ``from_s`` and ``to_s`` (and eof) as ingest would."""
    pipe = redis.pipeline(transaction=False)
    last_end = 0
    for t_ms, pcmu in frames(audio):
        last_end = t_ms + len(pcmu) // 16
        if t_ms < from_s * 1000 or (to_s is not None and t_ms >= to_s * 1000):
            continue
        pipe.xadd(keys.audio(sid), AudioFrame(t_ms=t_ms, pcmu=pcmu).to_redis())  # type: ignore[arg-type]
    if eof:
        pipe.xadd(keys.audio(sid), AudioFrame(t_ms=last_end, eof=True).to_redis())  # type: ignore[arg-type]
    await pipe.execute()


@asynccontextmanager
async def worker(
    redis_url: str, dg_url: str, **overrides: object
) -> AsyncIterator[asyncio.Task[None]]:
    """A running worker (its own engine) stopped on exit."""
    s = settings(redis_url=redis_url, deepgram_url=dg_url, **overrides)
    stop = asyncio.Event()
    engine = DeepgramEngine(s, backoff_s=0.01)
    task = asyncio.create_task(run(s, stop=stop, engine=engine))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await asyncio.gather(task, return_exceptions=True)


async def wait_messages(
    pubsub: aioredis.client.PubSub, done: set[str], what: str
) -> list[dict[str, object]]:
    """Collect pub/sub JSON messages until every SID in ``done`` has a ``what`` event."""
    seen: list[dict[str, object]] = []
    left = set(done)
    async with asyncio.timeout(WAIT_S):
        while left:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            data = json.loads(msg["data"])
            seen.append(data)
            if data["type"] == what:
                left.discard(data.get("call_sid") or data["call"]["call_sid"])  # type: ignore[index]
    return seen


async def history(redis: aioredis.Redis, sid: str) -> list[TranscriptEvent]:
    """The call's finals from ``cs:{sid}:transcript``."""
    return [TranscriptEvent.from_history(i, f) for i, f in await redis.xrange(keys.transcript(sid))]


def expected(script: list[Turn]) -> list[tuple[int, str]]:
    """``(channel, text)`` of each turn in the order its final is published."""
    return [(t.channel, t.text) for t in sorted(script, key=lambda t: (t.end_s, t.channel))]


async def test_call_is_transcribed_published_and_retired(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """Finals land in history in order, go live with their IDs, then end + call_ended + TTLs + ack."""
    script, duration_s = dentist(audio_dir)
    sid = sid_of(1)
    live = redis.pubsub()
    await live.subscribe(keys.live(sid), keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, call_audio(duration_s))
    async with FakeDeepgram(script) as fake, worker(redis_url, fake.url):
        seen = await wait_messages(live, {sid}, "call_ended")
    await live.aclose()
    finals = await history(redis, sid)
    assert [(e.channel, e.text) for e in finals] == expected(script)
    live_finals = [m for m in seen if m["type"] == "transcript" and m["is_final"]]
    assert [m["id"] for m in live_finals] == [e.id for e in finals]
    assert any(m["type"] == "transcript" and not m["is_final"] and m["id"] is None for m in seen)
    types = [m["type"] for m in seen]
    assert types.index("end") > max(i for i, t in enumerate(types) if t == "transcript")
    assert not await redis.sismember(keys.active(keys.tag_of(sid)), sid)
    assert (await redis.hget(keys.meta(sid), "status")) == b"ended"
    for key in keys.call_keys(sid):
        assert 0 < await redis.ttl(key) <= 24 * 3600
    assert await job_count(redis) == 0
    assert await pending_count(redis) == 0


async def test_two_workers_share_calls_and_each_call_is_transcribed_once(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """Four calls on two workers of two slots each: both work, every call's finals appear once."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sids = [sid_of(n) for n in range(10, 14)]
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS, *(keys.live(s) for s in sids))
    async with (
        FakeDeepgram(script) as fake,
        worker(redis_url, fake.url, consumer="a", max_calls=2),
        worker(redis_url, fake.url, consumer="b", max_calls=2),
    ):
        for sid in sids:
            await add_call(redis, sid)
            await add_audio(redis, sid, audio, to_s=8.0, eof=False)
        await wait_messages(events, set(sids), "transcript")  # all four are being served at once
        consumers: dict[str, int] = {}
        for stream in {jobs_of(sid) for sid in sids}:
            for c in await redis.xinfo_consumers(stream, keys.JOBS_GROUP):
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                consumers[name] = consumers.get(name, 0) + c["pending"]
        assert consumers == {"a": 2, "b": 2}
        for sid in sids:
            await add_audio(redis, sid, audio, from_s=8.0)
        await wait_messages(events, set(sids), "call_ended")
    await events.aclose()
    for sid in sids:
        assert [(e.channel, e.text) for e in await history(redis, sid)] == expected(script)
    assert len(fake.connections) == len(sids)


async def test_killed_worker_call_is_taken_over_without_duplicates(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """A worker dies mid-call; after claim_idle_ms the other resumes it: every final exactly once."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(20)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, audio, to_s=17.0, eof=False)
    async with FakeDeepgram(script, reference=audio) as fake:
        async with worker(redis_url, fake.url, consumer="a") as a:
            async with asyncio.timeout(WAIT_S):
                await redis.xread({keys.transcript(sid): "0-0"}, block=int(WAIT_S * 1000))
                while (
                    len(await history(redis, sid)) < 3
                ):  # let it get past both channels' first finals
                    await redis.xread({keys.transcript(sid): "$"}, block=1000)
            a.cancel()  # dies: no handover, its job stays pending under "a"
        before = await history(redis, sid)
        async with worker(redis_url, fake.url, consumer="b"):
            await add_audio(redis, sid, audio, from_s=17.0)
            await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    finals = await history(redis, sid)
    assert [(e.channel, e.text) for e in finals] == expected(script)
    assert finals[: len(before)] == before
    segments = [e.segment for e in finals]
    assert len(set(segments)) == len(segments)
    assert len(fake.connections) == 2
    assert fake.connections[1].offset_s > 0, "the new worker resumed from the checkpoint"


async def test_max_calls_is_respected(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """With max_calls=1 a second call waits in the stream until the first ends."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    first, second = sid_of(30), sid_of(31)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS, keys.live(first), keys.live(second))
    async with FakeDeepgram(script) as fake, worker(redis_url, fake.url, max_calls=1):
        for sid in (first, second):
            await add_call(redis, sid)
            await add_audio(redis, sid, audio, to_s=8.0, eof=False)
        seen = await wait_messages(events, {first}, "transcript")
        assert await pending_count(redis) == 1
        assert all(m.get("call_sid") != second for m in seen)
        await add_audio(redis, first, audio, from_s=8.0)
        await wait_messages(events, {first}, "call_ended")
        await add_audio(redis, second, audio, from_s=8.0)
        await wait_messages(events, {second}, "call_ended")
    await events.aclose()
    assert len(await history(redis, second)) == len(script)


async def test_engine_failure_publishes_error_and_still_ends_the_call(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A final ASR error (401) sends an error event, then end and call_ended; the job is acked."""
    sid = sid_of(40)
    live = redis.pubsub()
    await live.subscribe(keys.live(sid), keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, call_audio(1.0))
    async with FakeDeepgram([], api_key="other") as fake, worker(redis_url, fake.url):
        seen = await wait_messages(live, {sid}, "call_ended")
    await live.aclose()
    types = [m["type"] for m in seen]
    assert types[:2] == ["error", "end"]
    assert seen[0]["code"] == "asr_failed"
    assert await job_count(redis) == 0
    assert not await redis.sismember(keys.active(keys.tag_of(sid)), sid)


async def test_worker_survives_redis_restart(redis_server, redis_url: str, audio_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Redis restarts empty: the worker backs off, re-creates its group and serves a new call."""
    script, duration_s = dentist(audio_dir)
    sid = sid_of(50)
    async with FakeDeepgram(script) as fake, worker(redis_url, fake.url):
        redis_server.restart()  # drops every connection and all data
        r = connect(redis_url)
        try:
            events = r.pubsub()
            await events.subscribe(keys.CALL_EVENTS)
            await add_call(r, sid)
            await add_audio(r, sid, call_audio(duration_s))
            await wait_messages(events, {sid}, "call_ended")
            await events.aclose()
            assert len(await history(r, sid)) == len(script)
        finally:
            await r.aclose()


async def test_single_process_memory_mode_transcribes_a_call(audio_dir: Path) -> None:
    """With REDIS_URL=memory:// (fakeredis, the demo mode) the worker serves a call end to end."""
    script, duration_s = dentist(audio_dir)
    url = "memory://transcriber-test"
    r = connect(url)
    await r.flushall()
    sid = sid_of(60)
    events = r.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    await add_call(r, sid)
    await add_audio(r, sid, call_audio(duration_s))
    async with FakeDeepgram(script) as fake, worker(url, fake.url):
        await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    assert [(e.channel, e.text) for e in await history(r, sid)] == expected(script)
    await r.aclose()


async def test_call_whose_audio_stops_without_eof_is_ended(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """When ingest dies mid-call (no eof), the call ends after audio_idle_s with what was heard."""
    script, duration_s = dentist(audio_dir)
    sid = sid_of(40)
    live = redis.pubsub()
    await live.subscribe(keys.live(sid), keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, call_audio(duration_s), to_s=12.0, eof=False)
    async with FakeDeepgram(script) as fake, worker(redis_url, fake.url, audio_idle_s=0.5):
        seen = await wait_messages(live, {sid}, "call_ended")
    await live.aclose()
    assert any(m["type"] == "end" for m in seen)
    finals = await history(redis, sid)
    assert [(e.channel, e.text) for e in finals][:2] == expected(script)[:2]
    assert not await redis.sismember(keys.active(keys.tag_of(sid)), sid)
    assert (await redis.hget(keys.meta(sid), "status")) == b"ended"


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_S) -> None:
    """Re-evaluate the async predicate ``check`` every 20 ms until it holds."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_duplicate_job_on_another_worker_is_dropped(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """A second job for a call (ingest retried its start) taken by another worker is acked, not served."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(70)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS, keys.live(sid))
    await add_call(redis, sid)
    await add_audio(redis, sid, audio, to_s=8.0, eof=False)
    async with FakeDeepgram(script) as fake, worker(redis_url, fake.url, consumer="a", max_calls=1):
        await wait_messages(events, {sid}, "transcript")
        await redis.xadd(jobs_of(sid), {"call_sid": sid})  # the duplicate
        async with worker(redis_url, fake.url, consumer="b", max_calls=1):
            await until(lambda: _one_job(redis))  # b dropped the duplicate
            await add_audio(redis, sid, audio, from_s=8.0)
            seen = await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    assert [(e.channel, e.text) for e in await history(redis, sid)] == expected(script)
    assert len(fake.connections) == 1
    assert [m["type"] for m in seen].count("end") == 1
    assert await job_count(redis) == 0


async def _one_job(redis: aioredis.Redis) -> bool:
    """True when the job streams hold exactly one entry."""
    return bool(await job_count(redis) == 1)


async def test_stale_job_behind_many_live_ones_is_taken_over(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """XAUTOCLAIM scans 10 x COUNT entries a call: a stale job after 12 live ones is still reached."""
    tag = keys.tag_of(sid_of(100))
    stream = keys.jobs(tag)
    sids = [s for s in map(sid_of, range(100, 1000)) if keys.tag_of(s) == tag][:13]
    await redis.xgroup_create(stream, keys.JOBS_GROUP, id="0", mkstream=True)
    ids = [await redis.xadd(stream, {"call_sid": sid}) for sid in sids]
    await redis.xreadgroup(keys.JOBS_GROUP, "live", {stream: ">"}, count=13)
    # the last job's worker died ten minutes ago (XCLAIM ... IDLE sets its idle time); the first
    # twelve were just read, so they stay fresh for the whole test against a one-minute claim_idle_ms
    await redis.xclaim(stream, keys.JOBS_GROUP, "live", 0, [ids[12]], idle=600_000, justid=True)
    async with worker(redis_url, "ws://127.0.0.1:9/v1/listen", max_calls=1, claim_idle_ms=60_000):
        # the stale job names a call without metadata: the worker retires it at once
        await until(lambda: _job_gone(redis, stream, ids[12]))
    assert len(await redis.xrange(stream)) == 12


async def _job_gone(redis: aioredis.Redis, stream: str, job_id: bytes) -> bool:
    """True when ``job_id`` is no longer in ``stream``."""
    return not await redis.xrange(stream, job_id, job_id)


class CrashingEngine:
    """An engine whose sessions crash with a bug (not an AsrError) at open."""

    name = "crashing"

    def __init__(self) -> None:
        self.opened = 0

    async def open(self, call: object, on_result: object) -> None:
        """Count the attempt and crash."""
        self.opened += 1
        raise RuntimeError("bug")

    async def aclose(self) -> None:
        """Nothing to release."""


async def test_call_that_crashes_every_worker_is_ended_with_an_error(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A call whose serving crashes each time is retried MAX_DELIVERIES times, then ended with an error."""
    sid = sid_of(80)
    live = redis.pubsub()
    await live.subscribe(keys.live(sid), keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, call_audio(1.0))
    engine = CrashingEngine()
    s = settings(redis_url=redis_url, claim_idle_ms=100)
    stop = asyncio.Event()
    task = asyncio.create_task(run(s, stop=stop, engine=engine))  # type: ignore[arg-type]
    try:
        seen = await wait_messages(live, {sid}, "call_ended")
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task
    await live.aclose()
    assert engine.opened == MAX_DELIVERIES
    assert [m["type"] for m in seen][:2] == ["error", "end"]
    assert await job_count(redis) == 0
    assert not await redis.sismember(keys.active(keys.tag_of(sid)), sid)


async def test_lease_renewal_does_not_steal_back_a_job_claimed_meanwhile(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A job another worker claimed between our XPENDING and our XCLAIM stays with that worker."""
    # long lease and claim periods: only the renewal at the lease loop's start runs, and no
    # job turns idle enough to be claimed by age however slow the machine is
    s = settings(redis_url=redis_url, consumer="a", lease_renew_s=60.0, claim_idle_ms=600_000)
    stream = jobs_of(sid_of(90))
    await redis.xgroup_create(stream, keys.JOBS_GROUP, id="0", mkstream=True)
    job = (await redis.xadd(stream, {"call_sid": sid_of(90)})).decode()
    await redis.xreadgroup(keys.JOBS_GROUP, "a", {stream: ">"})
    pending_of_a = await redis.xpending_range(
        stream, keys.JOBS_GROUP, "-", "+", 10, consumername="a"
    )
    await redis.xclaim(stream, keys.JOBS_GROUP, "b", 0, [job], justid=True)  # b took it

    async def stale_xpending(*args: object, **kwargs: object) -> object:
        return pending_of_a  # what XPENDING said just before b's claim

    own = connect(redis_url)
    own.xpending_range = stale_xpending  # type: ignore[method-assign]
    w = Worker(s, own, DeepgramEngine(s))
    w.calls[sid_of(90)] = CallPipeline(sid_of(90), job, own, w.engine, s, asyncio.Event())
    stop = asyncio.Event()
    serving = asyncio.create_task(w.run(stop))
    try:
        # the lease loop renews first, then writes the health key
        await until(lambda: _exists(redis, keys.worker("a")))
        [entry] = await redis.xpending_range(stream, keys.JOBS_GROUP, "-", "+", 10)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await serving
        await own.aclose()
    assert entry["consumer"] == b"b"


async def _exists(redis: aioredis.Redis, key: str) -> bool:
    """True when ``key`` exists."""
    return bool(await redis.exists(key))


async def test_stopped_worker_hands_its_call_over_at_once(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """A worker stopped gracefully (SIGTERM) marks its job idle: the other takes it long before
    claim_idle_ms, and the call completes with every final once."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(50)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, audio, to_s=12.0, eof=False)
    slow_claim = {"claim_idle_ms": 600_000, "lease_renew_s": 0.1}
    async with FakeDeepgram(script, reference=audio) as fake:
        async with worker(redis_url, fake.url, consumer="a", **slow_claim):
            async with asyncio.timeout(WAIT_S):
                while len(await history(redis, sid)) < 2:
                    await redis.xread({keys.transcript(sid): "$"}, block=1000)
        # "a" stopped cleanly on leaving the block; "b" would wait 10 minutes for a dead worker
        async with worker(redis_url, fake.url, consumer="b", **slow_claim):
            await add_audio(redis, sid, audio, from_s=12.0)
            await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    assert [(e.channel, e.text) for e in await history(redis, sid)] == expected(script)


async def test_silent_channel_does_not_hold_the_checkpoint_back(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """Only the caller speaks: the callee's empty finals move the checkpoint on, so a worker
    taking over resumes near where the dead one stopped instead of replaying the whole call."""
    script, duration_s = dentist(audio_dir)
    caller_only = [t for t in script if t.channel == 0]
    audio = call_audio(duration_s)
    sid = sid_of(60)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    await add_call(redis, sid)
    await add_audio(redis, sid, audio, to_s=22.0, eof=False)
    async with FakeDeepgram(caller_only, reference=audio) as fake:
        async with worker(redis_url, fake.url, consumer="a") as a:
            async with asyncio.timeout(WAIT_S):
                while len(await history(redis, sid)) < 2:
                    await redis.xread({keys.transcript(sid): "$"}, block=1000)
            a.cancel()  # dies without handing over
        async with worker(redis_url, fake.url, consumer="b"):
            await add_audio(redis, sid, audio, from_s=22.0)
            await wait_messages(events, {sid}, "call_ended")
    await events.aclose()
    finals = await history(redis, sid)
    assert [(e.channel, e.text) for e in finals] == [(0, t.text) for t in caller_only]
    assert fake.connections[1].offset_s > 15.0, "resumed from the start: silence held it back"
