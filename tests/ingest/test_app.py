"""Ingest end to end on real sockets and a real redis-server: Twilio in, Redis out."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from callscribe.twilio_client import SimCall, stream_call, twilio_messages
from services.ingest.app import run
from shared import keys
from shared.audio import wav_to_ulaw_tracks
from shared.redisconn import connect as redis_connect
from shared.schema import AudioFrame, CallMeta, call_event_adapter
from shared.settings import IngestSettings
from tests import recordings

from .conftest import (
    WAIT_S,
    assert_reassembles,
    expected_channels,
    ingest_running,
    read_audio,
)


async def test_call_is_announced_and_audio_reassembles_exactly(
    ingest, redis: aioredis.Redis, redis_url: str, call_tracks: list[bytes]
) -> None:
    """A streamed call writes meta, active, a job, call_started, and its exact stereo audio."""
    call = SimCall(
        tracks=call_tracks,
        custom_parameters={"From": "+15550001", "To": "+15550002", "Direction": "inbound"},
    )
    sub = redis_connect(redis_url)
    pubsub = sub.pubsub()
    await pubsub.subscribe(keys.CALL_EVENTS)
    try:
        async with ingest() as port:
            result = await stream_call(f"ws://127.0.0.1:{port}/twilio", call, speed=0)
            frames = await read_audio(redis, call.call_sid)
            async with asyncio.timeout(WAIT_S):
                msg = None
                while msg is None or msg["type"] != "message":
                    msg = await pubsub.get_message(timeout=1.0)
    finally:
        await pubsub.aclose()
        await sub.aclose()
    assert result["sent_packets"] == 2 * 100 and result["dropped_packets"] == 0
    assert_reassembles(frames, [bytearray(t) for t in call_tracks])
    meta = CallMeta.from_redis(await redis.hgetall(keys.meta(call.call_sid)))
    assert (meta.stream_sid, meta.account_sid) == (call.stream_sid, call.account_sid)
    assert (meta.from_, meta.to, meta.channels) == ("+15550001", "+15550002", 2)
    assert meta.custom_parameters == {"Direction": "inbound"}
    assert await redis.smembers(keys.active(keys.tag_of(call.call_sid))) == {call.call_sid.encode()}
    jobs = await redis.xrange(keys.jobs(keys.tag_of(call.call_sid)))
    assert [fields[b"call_sid"] for _, fields in jobs] == [call.call_sid.encode()]
    event = call_event_adapter.validate_json(msg["data"])
    assert event.type == "call_started" and event.call.call_sid == call.call_sid


async def test_loss_and_late_outbound_become_silence_in_place(
    ingest, redis: aioredis.Redis, call_tracks: list[bytes]
) -> None:
    """Lost packets and a late outbound start are silence at their times; channels stay aligned."""
    call = SimCall(tracks=call_tracks, loss=0.1, seed=7, outbound_delay_ms=500)
    async with ingest() as port:
        result = await stream_call(f"ws://127.0.0.1:{port}/twilio", call, speed=20)
        frames = await read_audio(redis, call.call_sid)
    assert result["dropped_packets"] > 0
    want = expected_channels(twilio_messages(call), 2)
    assert want[1][: 8 * 500] == b"\xff" * 4000
    assert_reassembles(frames, want)


async def test_bad_input_on_one_connection_leaves_another_call_intact(
    ingest, redis: aioredis.Redis, call_tracks: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Junk on one socket is refused message by message; a parallel call is written exactly."""
    caplog.set_level(logging.INFO)
    good = SimCall(tracks=call_tracks)
    bad = SimCall(tracks=[call_tracks[0][:1600]])
    bad_msgs = [text for _, text in twilio_messages(bad)]
    media = json.loads(bad_msgs[2])
    media["media"]["payload"] = "!!not base64!!"
    junk = ["not json"] * 10 + ['{"event": "bogus"}', bad_msgs[2], '{"event": "media"}']
    async with ingest() as port:
        url = f"ws://127.0.0.1:{port}/twilio"
        async with connect(url) as ws:
            good_task = asyncio.create_task(stream_call(url, good, speed=20))
            for text in [*junk, bad_msgs[1], bad_msgs[1], json.dumps(media), *bad_msgs[2:]]:
                await ws.send(text)
            bad_frames = await read_audio(redis, bad.call_sid)
            await good_task
        good_frames = await read_audio(redis, good.call_sid)
        async with connect(url) as ws:  # an unusable media format is closed with 1003
            await ws.send(bad_msgs[1].replace("audio/x-mulaw", "audio/l16"))
            async with asyncio.timeout(WAIT_S):
                await ws.wait_closed()
            assert ws.close_code == 1003
    assert_reassembles(bad_frames, [bytearray(call_tracks[0][:1600])])
    bad_json = [r for r in caplog.records if getattr(r, "code", None) == "bad_json"]
    assert len(bad_json) == 3  # the first few per code, then only the summary
    closed = [r for r in caplog.records if r.getMessage() == "stream closed"]
    summaries = {getattr(r, "errors", "") for r in closed}
    assert any("bad_json:10" in s and "second_start:1" in s for s in summaries)
    assert "unsupported_media_format:1" in "".join(summaries)
    assert_reassembles(good_frames, [bytearray(t) for t in call_tracks])


async def test_shutdown_ends_open_calls_with_their_audio_and_eof(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Stopping the service mid-call writes the call's remaining audio, then eof."""
    call = SimCall(tracks=[bytes(range(256)) * 10])
    msgs = [text for _, text in twilio_messages(call)][:-1]  # no stop: the call is still open
    settings = IngestSettings(
        host="127.0.0.1", port=0, redis_url=redis_url, frame_ms=100, twilio_insecure=True
    )
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, stop=stop, bound=bound))
    port = await asyncio.wait_for(bound, WAIT_S)
    async with connect(f"ws://127.0.0.1:{port}/twilio") as ws:
        for text in msgs:
            await ws.send(text)
        async with asyncio.timeout(WAIT_S):  # the last packet has been read once it is in Redis
            while not await redis.exists(keys.meta(call.call_sid)):  # noqa: ASYNC110 (polls Redis: no event to await)
                await asyncio.sleep(0.01)
            stop.set()
            await ws.wait_closed()
        assert ws.close_code == 1012
    await asyncio.wait_for(task, WAIT_S + 10)
    frames = await read_audio(redis, call.call_sid)
    assert_reassembles(frames, expected_channels(twilio_messages(call), 1))


async def test_healthz_reports_calls_redis_and_drops(ingest) -> None:
    """/healthz answers 200 with status ok, live calls, redis reachability and drop count."""
    async with ingest() as port, httpx.AsyncClient(timeout=WAIT_S) as http:
        reply = await http.get(f"http://127.0.0.1:{port}/healthz")
    assert reply.status_code == 200
    body = reply.json()
    assert (body["status"], body["calls"], body["redis"], body["dropped_frames"]) == (
        "ok",
        0,
        True,
        0,
    )


async def test_memory_redis_mode_works_for_two_runs_in_one_process(
    call_tracks: list[bytes],
) -> None:
    """With REDIS_URL=memory:// two ingest runs in one process each write a full call."""
    url = "memory://ingest-test"
    r = redis_connect(url)
    try:
        for _ in range(2):
            call = SimCall(tracks=[call_tracks[0][:4000]])
            async with ingest_running(url) as port:
                await stream_call(f"ws://127.0.0.1:{port}/twilio", call, speed=0)
                frames = await read_audio(r, call.call_sid)
            assert_reassembles(frames, [bytearray(call_tracks[0][:4000])])
    finally:
        await r.flushall()
        await r.aclose()


async def test_silent_socket_is_closed_and_its_call_ended(
    ingest, redis: aioredis.Redis, call_tracks: list[bytes]
) -> None:
    """A peer that goes quiet mid-call (half-open TCP) is closed with 1001 after stream_idle_s,
    and the call's audio so far is flushed with its eof, as on a disconnect."""
    call = SimCall(tracks=call_tracks)
    messages = [text for _, text in twilio_messages(call)][:-1]  # everything but stop
    async with ingest(stream_idle_s=0.3) as port:
        async with connect(f"ws://127.0.0.1:{port}/twilio") as ws:
            for text in messages[: len(messages) // 2]:
                await ws.send(text)
            async with asyncio.timeout(WAIT_S):
                await ws.wait_closed()
            assert ws.close_code == 1001
        frames = await read_audio(redis, call.call_sid)
    assert frames, "the audio sent before the silence was written"


async def test_a_stream_longer_than_the_idle_limit_is_not_cut(
    ingest, redis: aioredis.Redis, call_tracks: list[bytes]
) -> None:
    """The idle limit counts silence between messages, not the length of the call."""
    call = SimCall(tracks=call_tracks)
    async with ingest(stream_idle_s=0.3) as port:
        result = await stream_call(f"ws://127.0.0.1:{port}/twilio", call, speed=2)
        frames = await read_audio(redis, call.call_sid)
    assert result["duration_s"] > 0.6 and result["close_code"] is None
    assert_reassembles(frames, [bytearray(t) for t in call_tracks])


async def test_audio_maxlen_caps_a_calls_audio_stream(ingest, redis: aioredis.Redis) -> None:
    """Issue 9: ``AUDIO_MAXLEN`` is a hard cap on a call's audio stream, whatever consumes it.

    A 28 s call (279 frames of up to 100 ms and an eof) with ``AUDIO_MAXLEN=20`` and no transcriber
    leaves the newest audio only, contiguous up to its eof. ``XADD … MAXLEN ~`` trims whole
    stream nodes and never below the cap, so the bound asserted is ``20 <= XLEN < 20 +
    stream-node-max-entries`` (read from the server, 100 by default; with 1.6 kB frames
    ``stream-node-max-bytes`` makes the nodes smaller and the stream closer to 20)."""
    maxlen, frame_ms = 20, 100
    call = SimCall(tracks=wav_to_ulaw_tracks(recordings.wav("call_dentist")))
    config = await redis.config_get("stream-node-max-entries")
    node_max = int(config["stream-node-max-entries"])
    async with ingest(audio_maxlen=maxlen, frame_ms=frame_ms) as port:
        await stream_call(f"ws://127.0.0.1:{port}/twilio", call, speed=0)
        await read_audio(redis, call.call_sid)  # until its eof, the call's last write
    entries = await redis.xrange(keys.audio(call.call_sid))
    frames = [AudioFrame.from_redis(fields) for _, fields in entries]
    assert frames[-1].eof and frames[-1].t_ms // frame_ms > maxlen + node_max  # it had to trim
    assert maxlen <= len(entries) < maxlen + node_max
    assert await redis.xlen(keys.audio(call.call_sid)) == len(entries)
    starts = [f.t_ms for f in frames[:-1]]  # the newest frames, with no gap, then the eof
    assert starts == list(range(starts[0], starts[0] + frame_ms * len(starts), frame_ms))
    assert 0 < frames[-1].t_ms - starts[-1] <= frame_ms
