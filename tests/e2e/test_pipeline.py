"""End to end: real recordings streamed as Twilio calls through three service processes.

Each test starts ingest, a transcriber and the gateway as separate processes on a real
redis-server, streams the recordings of ``tests/data`` at real-time pace with the Twilio
client, and watches each call from two clients: a tutorial ``/client`` watcher that connects
as soon as the call is live, and a ``/v1/ws`` watcher that joins mid-call asking for history.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from callscribe.twilio_client import SimCall, stream_call
from shared import keys
from shared.audio import pcm16_to_ulaw, read_wav
from shared.redisconn import connect
from shared.schema import TranscriptEvent
from tests import recordings
from tests.e2e.harness import (
    Received,
    run_services,
    wait_call_started,
    watch_tutorial_client,
    watch_v1,
)
from tests.e2e.scoring import load_reference, normalise, reference_by_speaker, wer
from tests.fakes.deepgram import FakeDeepgram, turns_from_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RECORDINGS = ["call_dentist", "call_order_status", "librivox_sense_and_sensibility"]
BOUNDS = {"call_dentist": 0.30, "call_order_status": 0.30, "librivox_sense_and_sensibility": 0.15}
SPEAKERS = ("caller", "callee")


def sim_call(name: str, n: int) -> SimCall:
    """The recording as a Twilio call: one track per channel (mono → inbound only)."""
    wav = read_wav(recordings.wav(name))
    tracks = [pcm16_to_ulaw(wav.samples[:, c]) for c in range(wav.channels)]
    return SimCall(
        tracks=tracks,
        call_sid=f"CAe2e{n:028d}",
        custom_parameters={"From": "+15550000001", "To": "+15550000002", "Direction": "inbound"},
    )


async def history(redis_url: str, call_sid: str) -> list[TranscriptEvent]:
    """The call's transcript stream, in order."""
    r = connect(redis_url)
    try:
        entries = await r.xrange(keys.transcript(call_sid))
    finally:
        await r.aclose()
    return [TranscriptEvent.from_history(i, f) for i, f in entries]


async def watch_call(
    gateway_ws: str, call: SimCall, join_after_s: float
) -> tuple[Received, Received]:
    """Start both watchers of ``call``: /client as soon as it is live, /v1/ws mid-call."""
    await wait_call_started(gateway_ws, call.call_sid, timeout_s=30)
    return await asyncio.gather(
        watch_tutorial_client(gateway_ws, call.call_sid, timeout_s=120),
        watch_v1(gateway_ws, call.call_sid, timeout_s=120, since="0", delay_s=join_after_s),
    )


def assert_same_finals(tutorial: Received, v1: Received, stored: list[TranscriptEvent]) -> None:
    """Both watchers got every stored final exactly once, in history order, and the end."""
    assert tutorial.ended and v1.ended
    assert [e.id for e in stored] == [m["id"] for m in v1.finals], "v1 finals differ from history"
    assert len({e.id for e in stored}) == len(stored)
    assert [
        (m["channel_index"][0], m["channel"]["alternatives"][0]["transcript"])
        for m in tutorial.finals
    ] == [(e.channel, e.text) for e in stored], "/client finals differ from history"


async def test_whisper_transcribes_three_concurrent_calls_for_two_watchers_each(
    redis_url: str, tmp_path: Path, audio_dir: Path
) -> None:
    """Three recordings as concurrent calls: both watchers get the whole transcript; WER within bounds."""
    env = {"ASR_ENGINE": "whisper", "CLAIM_IDLE_MS": "15000", "FINAL_TIMEOUT_S": "20"}
    calls = [sim_call(name, i) for i, name in enumerate(RECORDINGS)]
    async with run_services(redis_url, tmp_path, env) as svc:
        watchers = [asyncio.create_task(watch_call(svc.gateway_ws, c, 10.0)) for c in calls]
        streams = [asyncio.create_task(stream_call(svc.twilio_url, c, speed=1.0)) for c in calls]
        try:
            async with asyncio.timeout(180):
                await asyncio.gather(*streams)
                results = await asyncio.gather(*watchers)
        except BaseException:
            print(svc.log_tail())
            raise
    report = []
    for name, call, (tutorial, v1) in zip(RECORDINGS, calls, results, strict=True):
        stored = await history(redis_url, call.call_sid)
        assert stored, f"{name}: no finals"
        assert_same_finals(tutorial, v1, stored)
        ref = load_reference(audio_dir, name)
        by_speaker = reference_by_speaker(ref)
        for channel, speaker in enumerate(SPEAKERS):
            if speaker not in by_speaker and not (channel == 0 and "speaker" in by_speaker):
                continue
            reference = by_speaker.get(speaker) or by_speaker["speaker"]
            hypothesis = " ".join(e.text for e in stored if e.channel == channel)
            score = wer(reference, hypothesis)
            report.append(f"{name} {speaker}: WER {score:.3f}")
            assert score <= BOUNDS[name], f"{name} {speaker}: WER {score:.3f}\n{hypothesis}"
        for turn in ref["turns"]:
            channel = SPEAKERS.index(turn["speaker"]) if turn["speaker"] in SPEAKERS else 0
            near = [
                e
                for e in stored
                if e.channel == channel
                and e.start < turn["end"] + 1.0
                and e.end > turn["start"] - 1.0
            ]
            words = set(normalise(" ".join(e.text for e in near)).split())
            expected = set(normalise(turn["text"]).split())
            assert len(words & expected) >= len(expected) / 2, (
                f"{name}: turn {turn['text']!r} missing"
            )
    print("\n".join(report))


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_fake_deepgram_finals_arrive_once_in_order_at_both_watchers(
    redis_url: str, tmp_path: Path, audio_dir: Path
) -> None:
    """With the fake Deepgram, every scripted final reaches both watchers once, in order."""
    script = turns_from_json(audio_dir / "call_dentist.json")
    async with FakeDeepgram(script, api_key="test-key") as fake:
        env = {"ASR_ENGINE": "deepgram", "DEEPGRAM_URL": fake.url, "DEEPGRAM_API_KEY": "test-key"}
        call = sim_call("call_dentist", 7)
        async with run_services(redis_url, tmp_path, env) as svc:
            watcher = asyncio.create_task(watch_call(svc.gateway_ws, call, 12.0))
            try:
                async with asyncio.timeout(120):
                    await stream_call(svc.twilio_url, call, speed=1.0)
                    tutorial, v1 = await watcher
            except BaseException:
                print(svc.log_tail())
                raise
    stored = await history(redis_url, call.call_sid)
    assert_same_finals(tutorial, v1, stored)
    for channel in (0, 1):
        expected = [t.text for t in script if t.channel == channel]
        got = [e.text for e in stored if e.channel == channel]
        assert got == expected, f"channel {channel}"
    for event in stored:
        turn = next(t for t in script if t.channel == event.channel and t.text == event.text)
        # a result's window may open before its first word, as Deepgram's do: compare words
        assert abs(event.words[0].start - turn.start_s) < 0.3, (event, turn)
        assert abs(event.words[-1].end - turn.end_s) < 0.6, (event, turn)
        assert event.start <= event.words[0].start and event.end >= event.words[-1].end
    assert v1.interims > 0 and tutorial.interims > 0
