"""DeepgramSession against the fake Deepgram server (real WebSockets on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from services.transcriber.deepgram import DeepgramEngine, DeepgramSession
from services.transcriber.engine import CallAudio
from shared.errors import AsrError
from shared.schema import TranscriptEvent
from tests.fakes.deepgram import FakeDeepgram, Turn, wait_closed
from tests.transcriber.dgutil import call_audio, dentist, frames, settings

SID = "CA00000000000000000000000000000001"


async def run_call(
    fake: FakeDeepgram,
    audio: bytes,
    *,
    channels: int = 2,
    start_ms: int = 0,
    pause_after_frame: int | None = None,
    pause_s: float = 0.0,
    **overrides: object,
) -> tuple[list[TranscriptEvent], DeepgramSession]:
    """Stream ``audio`` through a session to ``fake``; return every event and the session."""
    events: list[TranscriptEvent] = []

    async def on_result(event: TranscriptEvent) -> None:
        events.append(event)

    engine = DeepgramEngine(settings(deepgram_url=fake.url, **overrides), backoff_s=0.01)
    session = await engine.open(CallAudio(SID, channels, start_ms=start_ms), on_result)
    try:
        for i, (t_ms, pcmu) in enumerate(frames(audio, channels)):
            await session.send(start_ms + t_ms, pcmu)
            if i == pause_after_frame:
                await asyncio.sleep(pause_s)  # silence on the line: nothing is sent
        await session.finish(5.0)
    finally:
        await session.aclose()
    await wait_closed(fake)
    return events, session


def finals(events: list[TranscriptEvent]) -> list[TranscriptEvent]:
    """The final events with text, in delivery order (empty finals mark silence or clear an
    interim; the pipeline decides which)."""
    return [e for e in events if e.is_final and e.text]


def expected_finals(script: list[Turn]) -> list[tuple[int, str, float]]:
    """``(channel, text, end)`` of each scripted turn, in the order its final comes out."""
    ordered = sorted(script, key=lambda t: (t.end_s, t.channel))
    return [(t.channel, t.text, round(t.end_s + 0.1, 3)) for t in ordered]


async def test_handshake_sends_documented_params_and_token_and_ends_with_closestream() -> None:
    """The URL carries raw-audio params (overrides win), the token header, and CloseStream ends it."""
    async with FakeDeepgram([Turn(0, 0.2, 0.8, "hello there")]) as fake:
        events, _ = await run_call(
            fake, call_audio(1.5), deepgram_params="punctuate=false&smart_format=true"
        )
    rec = fake.connections[0]
    assert rec.query["encoding"] == "mulaw"
    assert rec.query["sample_rate"] == "8000"
    assert rec.query["channels"] == "2"
    assert rec.query["multichannel"] == "true"
    assert rec.query["interim_results"] == "true"
    assert rec.query["punctuate"] == "false"
    assert rec.query["smart_format"] == "true"
    assert rec.query["model"] == "nova-2-phonecall"
    assert rec.headers["Authorization"] == "Token test-key"
    assert rec.controls[-1] == "CloseStream"
    assert rec.close_code == 1000
    assert [e.text for e in finals(events)] == ["hello there"]


async def test_keepalive_keeps_a_silent_connection_open() -> None:
    """During silence longer than Deepgram's idle limit, KeepAlive frames keep the one socket alive."""
    async with FakeDeepgram([Turn(0, 0.1, 0.5, "still here")], idle_timeout_s=0.3) as fake:
        events, session = await run_call(
            fake, call_audio(1.0), keepalive_s=0.1, pause_after_frame=2, pause_s=0.8
        )
    assert session.connections == 1
    assert len(fake.connections) == 1
    assert "KeepAlive" in fake.connections[0].controls
    assert fake.connections[0].close_code == 1000
    assert [e.text for e in finals(events)] == ["still here"]


async def test_without_keepalive_the_fake_closes_idle_and_the_session_reconnects() -> None:
    """The fake enforces the idle close (1011), and the session survives it by reconnecting."""
    async with FakeDeepgram([Turn(0, 0.1, 0.5, "still here")], idle_timeout_s=0.2) as fake:
        events, session = await run_call(
            fake, call_audio(1.0), keepalive_s=5.0, pause_after_frame=2, pause_s=0.5
        )
    assert fake.connections[0].close_code == 1011
    assert session.connections >= 2  # the pause outlasts more than one idle limit
    assert [e.text for e in finals(events)] == ["still here"]


async def test_all_finals_once_in_order_in_call_time(audio_dir: Path) -> None:
    """Every scripted turn arrives as exactly one final, in order, on its channel, in call seconds."""
    script, duration_s = dentist(audio_dir)
    async with FakeDeepgram(script) as fake:
        events, _ = await run_call(fake, call_audio(duration_s))
    got = [(e.channel, e.text, e.end) for e in finals(events)]
    assert got == expected_finals(script)
    segs = [e.segment for e in finals(events)]
    assert len(set(segs)) == len(segs)
    for e in events:
        assert e.speaker == ("caller" if e.channel == 0 else "callee")
    interims = [e for e in events if not e.is_final]
    assert interims, "interims are delivered"
    final_seg = {e.segment: e for e in finals(events)}
    for i in interims:  # an interim shares its final's segment and channel
        assert final_seg[i.segment].channel == i.channel


async def test_reconnect_after_drop_loses_and_repeats_no_final(audio_dir: Path) -> None:
    """After a 1011 drop mid-call, replayed audio yields every final once with call-time times."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    async with FakeDeepgram(script, reference=audio, drop_after_s=13.0) as fake:
        events, session = await run_call(fake, audio)
    assert session.connections == 2
    assert fake.connections[0].close_code == 1011
    assert fake.connections[1].offset_s > 5.0, "the replay starts after the last finals"
    got = [(e.channel, e.text, e.end) for e in finals(events)]
    assert got == expected_finals(script)


async def test_session_started_mid_call_reports_call_time(audio_dir: Path) -> None:
    """A session whose first frame is at 11 s (a resumed call) shifts Deepgram's times by 11 s."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    start_ms = 11_000
    tail = audio[start_ms * 8 * 2 :]
    async with FakeDeepgram(script, reference=audio) as fake:
        events, _ = await run_call(fake, tail, start_ms=start_ms)
    later = [t for t in expected_finals(script) if t[2] > 11.2]
    assert [(e.channel, e.text, e.end) for e in finals(events)] == later


async def test_wrong_key_is_final_and_not_retried() -> None:
    """A 401 at the handshake raises AsrError(retryable=False) after one attempt."""
    async with FakeDeepgram([], api_key="right") as fake:
        engine = DeepgramEngine(settings(deepgram_url=fake.url), backoff_s=0.01)

        async def on_result(event: TranscriptEvent) -> None:
            raise AssertionError("no result expected")

        with pytest.raises(AsrError) as info:
            await engine.open(CallAudio(SID, 2), on_result)
    assert info.value.retryable is False
    assert "401" in str(info.value)
    assert fake.attempts == 1


async def test_rate_limit_and_server_errors_are_retried() -> None:
    """429 then 503 at the handshake are retried with backoff, and the call still transcribes."""
    async with FakeDeepgram([Turn(1, 0.1, 0.6, "after retries")], reject_with=[429, 503]) as fake:
        events, session = await run_call(fake, call_audio(1.0))
    assert fake.attempts == 3
    assert session.connections == 1
    assert [e.text for e in finals(events)] == ["after retries"]


async def test_retries_exhausted_is_a_final_error() -> None:
    """Past max_retries, the session gives up with AsrError(retryable=False)."""
    async with FakeDeepgram([], reject_with=[429] * 10) as fake:
        engine = DeepgramEngine(settings(deepgram_url=fake.url, max_retries=2), backoff_s=0.01)

        async def on_result(event: TranscriptEvent) -> None:
            raise AssertionError("no result expected")

        with pytest.raises(AsrError) as info:
            await engine.open(CallAudio(SID, 2), on_result)
    assert info.value.retryable is False
    assert fake.attempts == 3


async def test_fake_refuses_raw_audio_without_encoding() -> None:
    """The fake answers HTTP 400 when raw audio lacks encoding/sample_rate, as Deepgram does."""
    async with FakeDeepgram([]) as fake:
        with pytest.raises(InvalidStatus) as info:
            async with asyncio.timeout(2):
                await connect(
                    fake.url + "?channels=1",
                    additional_headers={"Authorization": "Token test-key"},
                    proxy=None,
                )
    assert info.value.response.status_code == 400
