"""``callscribe watch`` against a real gateway ``run()`` and redis-server, events published by hand."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.gateway import app as gateway_app
from shared import keys
from shared.schema import CallEnded, CallMeta, CallStarted, CallStatus, EndEvent, TranscriptEvent
from shared.settings import GatewaySettings

CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))
WAIT_S = 20.0
SID = "CA" + "5" * 32
OLD_SID = "CA" + "4" * 32


@pytest.fixture
async def gateway_port(redis_url: str) -> AsyncIterator[int]:
    """A real gateway on 127.0.0.1 port 0, stopped after the test."""
    settings = GatewaySettings(host="127.0.0.1", port=0, redis_url=redis_url, gateway_auth="none")
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(gateway_app.run(settings, stop=stop, bound=bound))
    try:
        yield await asyncio.wait_for(bound, WAIT_S)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


def _final(segment: int, channel: int, start: float, text: str) -> TranscriptEvent:
    return TranscriptEvent(
        call_sid=SID,
        segment=segment,
        channel=channel,
        speaker="caller" if channel == 0 else "callee",
        is_final=True,
        speech_final=True,
        start=start,
        end=start + 1.5,
        text=text,
        confidence=0.9,
    )


async def _publish_final(redis, event: TranscriptEvent) -> None:
    """What the transcriber does: history entry first, then the live event carrying its ID."""
    entry_id = await redis.xadd(keys.transcript(SID), event.to_history())
    event.id = entry_id.decode()
    await redis.publish(keys.live(SID), event.to_json())


async def _readline(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), WAIT_S)
    assert line, "watch exited early"
    return line.decode()


async def _start_call(redis, meta: CallMeta) -> None:
    sid = meta.call_sid
    await redis.hset(keys.meta(sid), mapping=meta.to_redis())
    await redis.sadd(keys.active(keys.tag_of(sid)), sid)
    await redis.publish(keys.CALL_EVENTS, CallStarted(call=meta).to_json())


async def _end_call(redis, meta: CallMeta) -> None:
    sid = meta.call_sid
    meta.status, meta.ended_at = CallStatus.ENDED, meta.started_at + 5
    await redis.hset(keys.meta(sid), mapping=meta.to_redis())
    await redis.srem(keys.active(keys.tag_of(sid)), sid)
    await redis.publish(keys.live(sid), EndEvent(call_sid=sid).to_json())
    await redis.publish(keys.CALL_EVENTS, CallEnded(call=meta).to_json())


async def test_watch_follows_next_call_and_exits_on_end(gateway_port: int, redis) -> None:
    """With no CALL_SID, watch waits for the next call, prints finals on the right speaker, exits 0."""
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", "--gateway", f"ws://127.0.0.1:{gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        assert "waiting for the next one" in await _readline(proc.stdout)
        meta = CallMeta(call_sid=SID, stream_sid="MZ1", account_sid="AC1")
        await _start_call(redis, meta)
        assert f"watching call {SID}" in await _readline(proc.stdout)
        interim = _final(0, 0, 1.0, "hel").model_copy(update={"is_final": False})
        await redis.publish(keys.live(SID), interim.to_json())
        await _publish_final(redis, _final(0, 0, 1.0, "Hello, I'd like an appointment."))
        await _publish_final(redis, _final(1, 1, 65.0, "Good morning, Bright Smile Dental."))
        await _end_call(redis, meta)
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, err.decode()
    assert lines[:2] == [
        "[00:01] caller: Hello, I'd like an appointment.",
        "[01:05] callee: Good morning, Bright Smile Dental.",
    ]
    assert "hel\n" not in out.decode()  # interims are not printed when stdout is not a TTY
    assert lines[-1].startswith(f"call {SID} ended") and lines[-1].endswith("2 finals")


async def test_watch_replays_an_ended_call_with_since_0(gateway_port: int, redis) -> None:
    """``watch CALL_SID --since 0`` on a finished call prints its whole history and exits 0."""
    meta = CallMeta(call_sid=SID, status="ended", ended_at=1.0, started_at=0.5)
    await redis.hset(keys.meta(SID), mapping=meta.to_redis())
    for i, text in enumerate(["One.", "Two.", "Three."]):
        event = _final(i, i % 2, float(i), text)
        await redis.xadd(keys.transcript(SID), event.to_history())
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", SID, "--since", "0", "--gateway", f"ws://127.0.0.1:{gateway_port}/v1/ws",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines()[1:4] == [
        "[00:00] caller: One.",
        "[00:01] callee: Two.",
        "[00:02] caller: Three.",
    ]


async def test_watch_unreachable_gateway_fails_clearly() -> None:
    """No gateway listening: watch exits 1 with a message, no traceback."""
    from tests.redis_server import free_port

    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", "--gateway", f"ws://127.0.0.1:{free_port()}", "--reconnects", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1
    assert "cannot reach the gateway" in out.decode()
    assert b"Traceback" not in err


async def test_watch_survives_a_gateway_restart_without_gap_or_duplicate(
    redis_url: str, redis
) -> None:
    """The gateway restarts mid-call (1012): watch reconnects, resumes since its last final, and
    prints every final once, including the one published while no gateway was up."""
    from tests.redis_server import free_port

    port = free_port()
    settings = GatewaySettings(host="127.0.0.1", port=port, redis_url=redis_url, gateway_auth="none")

    async def start_gateway() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(gateway_app.run(settings, stop=stop, bound=bound))
        await asyncio.wait_for(bound, WAIT_S)
        return stop, task

    meta = CallMeta(call_sid=SID, stream_sid="MZ1", account_sid="AC1")
    await _start_call(redis, meta)
    stop, task = await start_gateway()
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", SID, "--gateway", f"ws://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        seen = [await _readline(proc.stdout)]
        assert f"watching call {SID}" in seen[-1]
        await _publish_final(redis, _final(0, 0, 1.0, "Before the restart."))
        seen.append(await _readline(proc.stdout))
        assert "Before the restart." in seen[-1]
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        await _publish_final(redis, _final(1, 1, 3.0, "While it was down."))
        stop, task = await start_gateway()
        notes = []
        while "While it was down." not in (line := await _readline(proc.stdout)):
            notes.append(line)
        assert notes and all("reconnecting" in n for n in notes), notes
        seen += [*notes, line]
        await _publish_final(redis, _final(2, 0, 5.0, "After it came back."))
        await _end_call(redis, meta)
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
    assert proc.returncode == 0, err.decode()
    text = "".join(seen) + out.decode()
    for line in ("Before the restart.", "While it was down.", "After it came back."):
        assert text.count(line) == 1, text


async def test_watch_an_unknown_call_exits_1_at_once(gateway_port: int) -> None:
    """A CALL_SID the gateway does not know (not live, not in history): exit 1 saying so."""
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", "CA" + "9" * 32, "--gateway", f"ws://127.0.0.1:{gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1, (out, err)
    assert "no such call: CA" + "9" * 32 in out.decode()
    assert b"Traceback" not in err


async def test_watch_exits_1_when_the_transcript_is_incomplete(gateway_port: int, redis) -> None:
    """asr_failed before the end: the finals are shown, then exit 1 saying the transcript is incomplete."""
    from shared.schema import ErrorEvent

    meta = CallMeta(call_sid=SID, stream_sid="MZ1", account_sid="AC1")
    await _start_call(redis, meta)
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", SID, "--gateway", f"ws://127.0.0.1:{gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert f"watching call {SID}" in await _readline(proc.stdout)
    await _publish_final(redis, _final(0, 0, 0.0, "Heard this."))
    assert "Heard this." in await _readline(proc.stdout)
    failed = ErrorEvent(code="asr_failed", message="transcription failed", call_sid=SID)
    await redis.publish(keys.live(SID), failed.to_json())
    await _end_call(redis, meta)
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1, err.decode()
    assert "transcript is incomplete" in out.decode()


async def test_watch_says_when_the_audio_stops_and_resumes(gateway_port: int, redis) -> None:
    """audio_stopped and audio_resumed each print one note with the call time; the watch goes on."""
    from shared.schema import AudioResumed, AudioStopped

    meta = CallMeta(call_sid=SID, stream_sid="MZ1", account_sid="AC1")
    await _start_call(redis, meta)
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", SID, "--gateway", f"ws://127.0.0.1:{gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert f"watching call {SID}" in await _readline(proc.stdout)
    await _publish_final(redis, _final(0, 0, 0.0, "Before the silence."))
    assert "Before the silence." in await _readline(proc.stdout)  # the subscription is live
    stopped = AudioStopped(call_sid=SID, at_s=72.4, idle_s=5.0)
    await redis.publish(keys.live(SID), stopped.to_json())
    assert "audio stopped at 01:12: no sound for 5.0 s" in await _readline(proc.stdout)
    await redis.publish(keys.live(SID), AudioResumed(call_sid=SID, at_s=80.0).to_json())
    assert "audio resumed at 01:20" in await _readline(proc.stdout)
    await _end_call(redis, meta)
    _out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, err.decode()


async def test_watch_follows_the_new_call_when_the_previous_one_ends(
    gateway_port: int, redis
) -> None:
    """Issue 11: started while a previous call is finishing and the next has begun (two live
    calls), watch waits; once the old call ends it follows the one left, at once, from its
    start (not until a third call starts), and exits 0 at its end."""
    old = CallMeta(call_sid=OLD_SID, stream_sid="MZ0", account_sid="AC1")
    await _start_call(redis, old)
    new = CallMeta(call_sid=SID, stream_sid="MZ1", account_sid="AC1", started_at=old.started_at + 1)
    await _start_call(redis, new)
    await _publish_final(redis, _final(0, 0, 0.5, "Before the watch."))  # replayed from 0
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", "--gateway", f"ws://127.0.0.1:{gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        notes = [await _readline(proc.stdout)]
        while "waiting for" not in notes[-1]:  # the list was answered: both calls are live
            notes.append(await _readline(proc.stdout))
        assert "2 live calls" in notes[0], notes
        await _end_call(redis, old)  # the previous call's end, just after
        assert f"watching call {SID}" in await _readline(proc.stdout)
        assert "Before the watch." in await _readline(proc.stdout)
        await _publish_final(redis, _final(1, 1, 2.0, "After the old call ended."))
        assert "After the old call ended." in await _readline(proc.stdout)
        await _end_call(redis, new)
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    last = out.decode().splitlines()[-1]
    assert last.startswith(f"call {SID} ended") and last.endswith("2 finals"), last
    assert OLD_SID + " ended" not in out.decode()


@pytest.mark.parametrize(
    "since",
    ["garbage", "", "1-", "-1", "0\n", "99999999999999999999999-0", "18446744073709551616-0"],
)
async def test_watch_with_a_bad_since_exits_2_with_one_line(
    gateway_port: int, redis, since: str
) -> None:
    """``--since garbage`` (or a stream ID Redis would refuse: a trailing newline, a part over
    2**64 - 1): exit 2 with one line naming --since, before connecting; no hang, no traceback.
    The call is live, so a value that slipped through would be sent to the gateway."""
    await _start_call(redis, CallMeta(call_sid=SID, stream_sid="MZ1", account_sid="AC1"))
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "watch", SID, "--since", since, "--gateway", f"ws://127.0.0.1:{gateway_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, (out, err)
    assert out == b""
    [line] = err.decode().splitlines()
    assert line.startswith("callscribe watch: --since: not a history ID"), line
    assert repr(since) in line
