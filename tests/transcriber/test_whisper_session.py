"""The Whisper session's policies with a scripted decoder: padding, context, pauses, skipped work.

The VAD is the real Silero model (deterministic); the decoder is a fake that records every
call and answers a scripted text, so these tests run in well under a second each and say
exactly what was decoded, with which prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.transcriber.engine import CallAudio
from services.transcriber.whisper import WhisperEngine
from services.transcriber.whisper_decode import Hypothesis
from services.transcriber.whisper_session import WhisperSession
from shared.audio import interleave, pcm16_to_ulaw, read_wav
from shared.schema import TranscriptEvent
from shared.settings import TranscriberSettings
from tests import recordings

BOOK = "librivox_sense_and_sensibility"


@dataclass
class Call:
    """One decode the session asked for: the span in call time (s), kind and prompt."""

    start_s: float
    end_s: float
    words: bool
    prompt: str | None


class ScriptedDecoder:
    """Answers ``text(call)`` for every decode and records the calls."""

    model = None

    def __init__(self, text: Any) -> None:
        self.text = text
        self.calls: list[Call] = []

    def decode(self, audio16: np.ndarray, offset_s: float, **kw: Any) -> Hypothesis:
        """Record the call; answer the scripted text."""
        call = Call(offset_s, offset_s + len(audio16) / 16000, kw["words"], kw.get("prompt"))
        self.calls.append(call)
        return Hypothesis(self.text(call), 0.9)


def _tracks(name: str, *cuts: tuple[float, float], quiet_s: float = 0.0) -> list[bytes]:
    """The channels of ``name``: the spans ``cuts`` (s) joined, then ``quiet_s`` of noise floor."""
    wav = read_wav(recordings.wav(name))
    samples = np.concatenate([wav.samples[int(a * 8000) : int(b * 8000)] for a, b in cuts])
    if quiet_s:
        floor = wav.samples[: int(0.4 * 8000)]  # the reading's first 0.4 s: room noise only
        tail = np.concatenate([floor] * int(np.ceil(quiet_s / 0.4)))[: int(quiet_s * 8000)]
        samples = np.concatenate([samples, tail])
    return [pcm16_to_ulaw(samples[:, c]) for c in range(wav.channels)]


async def _stream(
    decoder: ScriptedDecoder, tracks: list[bytes], **settings: Any
) -> tuple[list[TranscriptEvent], WhisperSession]:
    engine = WhisperEngine(
        TranscriberSettings(asr_engine="whisper", **settings),
        interim_max_lag_s=1e9,
        decoder=decoder,  # type: ignore[arg-type]
    )
    events: list[TranscriptEvent] = []

    async def on_result(event: TranscriptEvent) -> None:
        events.append(event)

    try:
        session = await engine.open(CallAudio("CAunit", len(tracks)), on_result)
        for i in range(0, len(tracks[0]), 800):
            await session.send(i // 8, interleave([t[i : i + 800] for t in tracks]))
            await session.drain()  # as a real-time feed the engine keeps up with
        await session.finish(timeout_s=30)
    finally:
        await engine.aclose()
    return events, session


def _finals(events: list[TranscriptEvent]) -> list[TranscriptEvent]:
    return [e for e in events if e.is_final]


async def test_utterances_are_padded_so_no_word_is_clipped() -> None:
    """Each final decodes from 0.8 s before the VAD's start (or the previous final's end) to 0.4 s after its end."""
    decoder = ScriptedDecoder(lambda c: "Said so.")
    events, _ = await _stream(decoder, _tracks(BOOK, (0.0, 17.2)))
    finals = _finals(events)
    assert len(finals) == 3
    decoded_to = 0.0
    for e in finals:
        span = next(c for c in decoder.calls if c.words and c.end_s >= e.end + 0.4 - 1e-3)
        assert span.start_s <= max(e.start - 0.8, decoded_to) + 1e-3
        assert span.start_s >= decoded_to - 1e-3  # never the previous utterance's words again
        decoded_to = span.end_s


async def test_the_calls_recent_finals_are_the_prompt() -> None:
    """The first decode has no prompt; later ones get the finals said before, both sides, in order."""
    decoder = ScriptedDecoder(lambda c: f"Words from {c.start_s:.1f}.")
    events, _ = await _stream(decoder, _tracks("call_dentist", (0.0, 15.4)))
    finals = _finals(events)
    assert [e.channel for e in finals] == [1, 0, 1]  # callee, caller, callee
    assert decoder.calls[0].prompt is None
    last = [c for c in decoder.calls if c.words][-1]
    assert last.prompt == f"{finals[0].text} {finals[1].text}"


async def test_a_pause_inside_a_sentence_does_not_end_the_utterance() -> None:
    """Text that does not end a sentence holds the utterance over a 0.7 s pause: one final, not two."""
    tracks = _tracks(BOOK, (0.0, 7.75), (8.0, 11.3))  # the reading's pause cut to ≈ 0.7 s
    held, _ = await _stream(ScriptedDecoder(lambda c: "and then"), tracks)
    ended, _ = await _stream(ScriptedDecoder(lambda c: "And then."), tracks)
    assert len(_finals(held)) == 1
    assert _finals(held)[0].start < 1.5 and _finals(held)[0].end > 10.0
    assert len(_finals(ended)) == 2


async def test_no_interim_is_decoded_when_no_new_speech_arrived() -> None:
    """During the silence before a held utterance closes, interims are skipped, not decoded."""
    decoder = ScriptedDecoder(lambda c: "and then")
    events, session = await _stream(
        decoder, _tracks(BOOK, (0.0, 7.5), quiet_s=2.0), whisper_interim_s=0.25
    )
    (final,) = _finals(events)
    interims = [c for c in decoder.calls if not c.words]
    assert interims and all(c.end_s <= final.end + 0.35 for c in interims)
    assert session.stats["interims_unchanged"] >= 2


async def test_a_paused_candidate_is_reused_as_the_final() -> None:
    """An utterance held over its last pause closes with the candidate decoded there: no second decode."""
    decoder = ScriptedDecoder(lambda c: "and then")
    events, session = await _stream(decoder, _tracks(BOOK, (0.0, 7.5), quiet_s=2.0))
    assert len(_finals(events)) == 1
    assert [c.words for c in decoder.calls].count(True) == 1
    assert session.stats["candidates_reused"] == 1
