"""Deepgram live protocol, pure: the listen URL, parsing server messages, Results → our event.

No I/O here, so every rule is tested without sockets. Protocol reference:
https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming (query
parameters, the ``Results`` / ``Metadata`` / ``UtteranceEnd`` / ``SpeechStarted`` messages).

Deepgram's result times restart at 0 on every connection; :func:`results_to_event` adds the
connection's ``offset_s`` (call time of the first audio sent on it) so events are in call time.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import BadInput
from shared.schema import SPEAKERS, TranscriptEvent, Word


class DeepgramMessageError(BadInput):
    """A server message that is not JSON, or a ``Results`` that does not have Deepgram's shape.

    ``code``: ``bad_json`` or ``bad_results``.
    """


class DgWord(BaseModel):
    """One word of an alternative; ``start``/``end`` in seconds from the connection's start."""

    model_config = ConfigDict(extra="ignore")

    word: str
    start: float
    end: float
    confidence: float = 0.0
    punctuated_word: str | None = None


class DgAlternative(BaseModel):
    """``channel.alternatives[i]``: the transcript text, its confidence and its words."""

    model_config = ConfigDict(extra="ignore")

    transcript: str = ""
    confidence: float = 0.0
    words: list[DgWord] = Field(default_factory=list)


class DgChannel(BaseModel):
    """``channel``: the recognition alternatives, best first."""

    model_config = ConfigDict(extra="ignore")

    alternatives: list[DgAlternative] = Field(default_factory=list)


class DgResults(BaseModel):
    """``{"type": "Results", "channel_index": [ch, n], "start", "duration", "is_final", …}``.

    ``start``/``duration`` in seconds from the start of the connection's audio.
    """

    model_config = ConfigDict(extra="ignore")

    type: Literal["Results"]
    channel_index: list[int] = Field(min_length=1, max_length=2)
    start: float = Field(ge=0)
    duration: float = Field(ge=0)
    is_final: bool = False
    speech_final: bool = False
    from_finalize: bool = False
    channel: DgChannel


def build_url(
    base_url: str, *, channels: int, model: str, language: str, extra_params: str = ""
) -> str:
    """The ``/v1/listen`` URL for raw mu-law 8 kHz audio with ``channels`` interleaved channels.

    ``extra_params`` (``a=1&b=2``) override the defaults, so an operator can change any of them.
    """
    params: dict[str, str] = {
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": str(channels),
        "multichannel": "true",
        "interim_results": "true",
        "punctuate": "true",
        "model": model,
        "language": language,
    }
    parts = urlsplit(base_url)
    params.update(parse_qsl(parts.query))
    params.update(parse_qsl(extra_params.lstrip("?&")))
    return urlunsplit(parts._replace(query=urlencode(params)))


def parse_message(raw: str | bytes) -> dict[str, Any]:
    """Decode one server text frame into a dict with a string ``type`` (``""`` when absent).

    Raises:
        DeepgramMessageError: ``bad_json`` (not a JSON object).
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise DeepgramMessageError("bad_json", "server message is not JSON") from None
    if not isinstance(data, dict):
        raise DeepgramMessageError("bad_json", "server message is not a JSON object")
    if not isinstance(data.get("type"), str):
        data["type"] = ""
    return data


def parse_results(data: dict[str, Any]) -> DgResults:
    """Validate a ``Results`` message.

    Raises:
        DeepgramMessageError: ``bad_results`` (missing or ill-typed fields).
    """
    try:
        return DgResults.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "?"
        raise DeepgramMessageError("bad_results", f"malformed Results ({where})") from None


class SegmentTracker:
    """Allocates segment numbers: one per stretch of speech on one channel, within a call.

    A channel's segment opens at its first non-empty interim (or final) and closes at its final.
    """

    def __init__(self, first_segment: int = 0) -> None:
        self.next_segment = first_segment
        self._open: dict[int, int] = {}

    def current(self, channel: int) -> int:
        """The channel's open segment, opening a new one if none is open."""
        seg = self._open.get(channel)
        if seg is None:
            seg = self._open[channel] = self.next_segment
            self.next_segment += 1
        return seg

    def close(self, channel: int) -> int | None:
        """Close the channel's open segment; return it (None when none was open)."""
        return self._open.pop(channel, None)


def results_to_event(
    msg: DgResults, *, call_sid: str, channels: int, offset_s: float, segments: SegmentTracker
) -> TranscriptEvent | None:
    """Map one ``Results`` to a :class:`TranscriptEvent` in call time, or None to publish nothing.

    None for an interim with empty text. An empty final is returned (text ``""``): for a segment
    whose interims were shown it clears them; for a stretch of silence (Deepgram sends one every
    few seconds per channel) it tells the pipeline the channel is final up to its ``end``, which
    moves the call's checkpoint on. ``offset_s``: call time in seconds of the connection's
    first audio.

    Raises:
        DeepgramMessageError: ``bad_results``: ``channel_index`` outside ``0..channels-1``.
    """
    channel = msg.channel_index[0]
    if not 0 <= channel < min(channels, len(SPEAKERS)):
        raise DeepgramMessageError("bad_results", f"channel_index {channel} out of range")
    alt = msg.channel.alternatives[0] if msg.channel.alternatives else DgAlternative()
    text = alt.transcript.strip()
    if msg.is_final:
        seg = segments.close(channel)
        if seg is None:
            seg = segments.current(channel)
            segments.close(channel)
    else:
        if not text:
            return None
        seg = segments.current(channel)
    start = offset_s + msg.start
    return TranscriptEvent(
        call_sid=call_sid,
        segment=seg,
        channel=channel,
        speaker=SPEAKERS[channel],
        is_final=msg.is_final,
        speech_final=msg.speech_final,
        start=round(start, 3),
        end=round(start + msg.duration, 3),
        text=text,
        confidence=alt.confidence,
        words=[
            Word(
                word=w.punctuated_word or w.word,
                start=round(offset_s + w.start, 3),
                end=round(offset_s + w.end, 3),
                confidence=w.confidence,
            )
            for w in alt.words
        ],
    )
