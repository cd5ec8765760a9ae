"""The embedded Whisper engine on real recordings: accuracy, timing, segments, lifecycle.

Each recording is fed frame by frame (100 ms, interleaved as ingest writes them) as fast as the
engine takes it, once per module; the tests then check different properties of the same run.
After each frame the feed waits for the session to be done with it (``drain``), as a real-time
feed on a machine that keeps up does: interims are decoded in the background, and when audio
arrives faster than they decode, an utterance ends before its interim is back and the final
supersedes it, which would leave these runs with no interim to check.
Run with ``pytest -s`` to see the per-file WER lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from services.transcriber.engine import CallAudio
from services.transcriber.whisper import WhisperEngine
from shared.audio import interleave, pcm16_to_ulaw, read_wav
from shared.errors import AsrError
from shared.schema import TranscriptEvent
from shared.settings import TranscriberSettings
from tests import recordings

CALLS = ["call_dentist", "call_order_status"]
BOOK = "librivox_sense_and_sensibility"
FRAME_MS = 100
_normalise = EnglishTextNormalizer()
_runs: dict[tuple[str, int, float, float], list[TranscriptEvent]] = {}


def _settings(**kw: object) -> TranscriberSettings:
    return TranscriberSettings(asr_engine="whisper", **kw)


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    """One engine (one model load) for the module; interims never skipped, so runs repeat."""
    eng = WhisperEngine(_settings(), interim_max_lag_s=1e9)
    yield eng
    eng.close()


def _tracks(name: str, cut: tuple[float, float]) -> list[bytes]:
    wav = read_wav(recordings.wav(name))
    a, b = int(cut[0] * 8000), int(min(cut[1], wav.duration_s) * 8000)
    return [pcm16_to_ulaw(wav.samples[a:b, c]) for c in range(wav.channels)]


async def _run(
    engine: WhisperEngine,
    name: str,
    *,
    start_ms: int = 0,
    cut: tuple[float, float] = (0.0, 1e9),
    first_segment: int = 0,
) -> list[TranscriptEvent]:
    """Feed ``name`` (the span ``cut``, in s) from call time ``start_ms``; every event, in order."""
    key = (name, start_ms, *cut)
    if key in _runs:
        return _runs[key]
    tracks = _tracks(name, cut)
    events: list[TranscriptEvent] = []

    async def on_result(event: TranscriptEvent) -> None:
        events.append(event)

    call = CallAudio("CAtest", len(tracks), start_ms=start_ms, first_segment=first_segment)
    session = await engine.open(call, on_result)
    step = 8 * FRAME_MS
    for i in range(0, len(tracks[0]), step):
        await session.send(start_ms + i // 8, interleave([t[i : i + step] for t in tracks]))
        await session.drain()
    await session.finish(timeout_s=60)
    _runs[key] = events
    return events


def _reference(audio_dir: Path, name: str) -> dict:
    return json.loads((audio_dir / f"{name}.json").read_text())


def _finals(events: list[TranscriptEvent], channel: int) -> list[TranscriptEvent]:
    return [e for e in events if e.is_final and e.channel == channel]


def _wer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.wer([_normalise(r) for r in refs], [_normalise(h) or "<empty>" for h in hyps])


def _per_channel(ref: dict, events: list[TranscriptEvent]) -> tuple[list[str], list[str]]:
    refs, hyps = [], []
    for ch, speaker in enumerate(ref["channels"]):
        refs.append(" ".join(t["text"] for t in ref["turns"] if t["speaker"] == speaker))
        hyps.append(" ".join(e.text for e in _finals(events, ch)))
    return refs, hyps


@pytest.mark.parametrize("name", CALLS)
async def test_call_wer_within_bound(engine: WhisperEngine, audio_dir: Path, name: str) -> None:
    """A stereo call streamed frame by frame scores WER ≤ 0.30, both channels pooled."""
    events = await _run(engine, name)
    refs, hyps = _per_channel(_reference(audio_dir, name), events)
    pooled = _wer(refs, hyps)
    per = [_wer([r], [h]) for r, h in zip(refs, hyps, strict=True)]
    print(f"\nWER {name}: pooled {pooled:.3f} caller {per[0]:.3f} callee {per[1]:.3f}")
    assert pooled <= 0.30


async def test_mono_book_wer_within_bound(engine: WhisperEngine, audio_dir: Path) -> None:
    """A mono recording (channels=1) scores WER ≤ 0.15, every event on channel 0 (caller)."""
    events = await _run(engine, BOOK)
    refs, hyps = _per_channel(_reference(audio_dir, BOOK), events)
    score = _wer(refs, hyps)
    print(f"\nWER {BOOK}: {score:.3f}")
    assert score <= 0.15
    assert events and all(e.channel == 0 and e.speaker == "caller" for e in events)


@pytest.mark.parametrize("name", [*CALLS, BOOK])
async def test_every_turn_on_its_speakers_channel(
    engine: WhisperEngine, audio_dir: Path, name: str
) -> None:
    """Each reference turn is found (WER ≤ 0.5) in the finals of its speaker's channel that overlap it."""
    ref = _reference(audio_dir, name)
    events = await _run(engine, name)
    for turn in ref["turns"]:
        ch = ref["channels"].index(turn["speaker"])
        near = [
            e.text
            for e in _finals(events, ch)
            if e.start < turn["end"] + 0.5 and e.end > turn["start"] - 0.5
        ]
        assert _wer([turn["text"]], [" ".join(near)]) <= 0.5, turn["text"]


@pytest.mark.parametrize("name", [*CALLS, BOOK])
async def test_finals_ordered_inside_call_and_on_turns(
    engine: WhisperEngine, audio_dir: Path, name: str
) -> None:
    """Finals are in time order per channel, inside the call, each overlapping a turn of its speaker."""
    ref = _reference(audio_dir, name)
    events = await _run(engine, name)
    for ch, speaker in enumerate(ref["channels"]):
        finals = _finals(events, ch)
        assert finals
        assert [e.start for e in finals] == sorted(e.start for e in finals)
        turns = [t for t in ref["turns"] if t["speaker"] == speaker]
        for e in finals:
            assert 0 <= e.start < e.end <= ref["duration"] + 0.1
            assert all(e.start - 0.05 <= w.start <= w.end <= e.end + 0.05 for w in e.words)
            assert e.speech_final and 0 < e.confidence <= 1 and e.words
            assert any(e.start < t["end"] and e.end > t["start"] for t in turns), e


@pytest.mark.parametrize("name", [*CALLS, BOOK])
async def test_segments_consistent_and_interims_first(
    engine: WhisperEngine, audio_dir: Path, name: str
) -> None:
    """Segments count up from first_segment; one final each, after its interims; most finals had an interim."""
    events = await _run(engine, name)
    segments = sorted({e.segment for e in events})
    assert segments == list(range(len(segments)))
    with_interim = 0
    for seg in segments:
        of_seg = [e for e in events if e.segment == seg]
        assert [e.is_final for e in of_seg].count(True) == 1
        assert of_seg[-1].is_final
        assert len({e.channel for e in of_seg}) == 1
        with_interim += len(of_seg) > 1
        assert all(not e.words and e.id is None for e in of_seg[:-1])
    assert with_interim >= 0.75 * len(segments)


async def test_start_ms_shifts_times(engine: WhisperEngine, audio_dir: Path) -> None:
    """With start_ms = 60 s, every time is call time: the reference turn times plus 60 s."""
    events = await _run(engine, BOOK, start_ms=60_000, cut=(0.0, 11.3), first_segment=7)
    finals = _finals(events, 0)
    assert [e.segment for e in finals] == list(range(7, 7 + len(finals)))
    turns = _reference(audio_dir, BOOK)["turns"][:2]
    assert len(finals) == 2
    for e, t in zip(finals, turns, strict=True):
        assert abs(e.start - (60 + t["start"])) < 1.0 and abs(e.end - (60 + t["end"])) < 1.0
        assert _wer([t["text"]], [e.text]) <= 0.3


async def test_finish_flushes_the_open_utterance(engine: WhisperEngine, audio_dir: Path) -> None:
    """Audio ending mid-speech (no closing silence): finish still delivers that utterance's final."""
    last = _reference(audio_dir, BOOK)["turns"][-1]
    events = await _run(engine, BOOK, cut=(last["start"] - 0.5, last["end"] - 0.05))
    finals = _finals(events, 0)
    assert len(finals) == 1
    assert "himself" in _normalise(finals[0].text)


async def test_interims_skipped_when_behind_finals_kept() -> None:
    """An engine that counts itself behind (lag bound 0 s) skips every interim but no final."""
    eng = WhisperEngine(_settings(), interim_max_lag_s=0.0)
    try:
        tracks = _tracks("call_dentist", (0.0, 5.9))
        events: list[TranscriptEvent] = []

        async def on_result(event: TranscriptEvent) -> None:
            events.append(event)

        session = await eng.open(CallAudio("CAlag", 2), on_result)
        for i in range(0, len(tracks[0]), 160):  # 20 ms frames: other lengths work too
            await session.send(i // 8, interleave([t[i : i + 160] for t in tracks]))
        await session.finish(timeout_s=60)
    finally:
        await eng.aclose()
    assert events and all(e.is_final for e in events)
    assert [e.channel for e in events] == [1]
    assert "karen" in _normalise(events[0].text)


async def test_model_load_failure_is_a_final_asr_error(tmp_path: Path) -> None:
    """A model directory that does not hold a model makes open() raise AsrError(retryable=False)."""
    eng = WhisperEngine(_settings(whisper_model=str(tmp_path / "nope")))
    try:
        with pytest.raises(AsrError) as info:
            await eng.open(CallAudio("CAbad", 2), _ignore)
        assert info.value.retryable is False
        assert "cannot load the Whisper model" in str(info.value)
    finally:
        await eng.aclose()


async def _ignore(event: TranscriptEvent) -> None:
    return None


async def test_aclose_is_idempotent_and_refuses_more_audio(engine: WhisperEngine) -> None:
    """aclose() twice is fine; send() afterwards raises AsrError; odd-length frames do not crash."""
    session = await engine.open(CallAudio("CAclose", 2), _ignore)
    await session.send(0, b"\xff" * 1601)  # a trailing half sample is dropped
    await session.send(100, b"\xff" * 1600)
    await session.aclose()
    await session.aclose()
    with pytest.raises(AsrError):
        await session.send(200, b"\xff" * 1600)
    await session.finish(timeout_s=1)


async def test_bad_channel_count_refused(engine: WhisperEngine) -> None:
    """A call with 3 channels is refused with AsrError, not a crash."""
    with pytest.raises(AsrError):
        await engine.open(CallAudio("CA3", 3), _ignore)
