"""Streaming voice-activity detection: one channel of 8 kHz audio cut into utterances.

Whisper is not a streaming recogniser, so the embedded engine decodes whole utterances. This
module finds them, incrementally, with the Silero VAD model that faster-whisper ships
(``faster_whisper.vad``, ``silero_vad_v6.onnx``: 512-sample windows of 16 kHz audio, each with
the previous window's last 64 samples as context, LSTM state ``h``/``c`` carried from window to
window). The cutting rules are those of ``faster_whisper.vad.get_speech_timestamps`` run on the
open stream instead of a whole file: speech starts at a window with probability ≥ 0.5, ends
at the first window below 0.35 that is followed by ``min_silence_ms`` of such windows, and an
utterance longer than ``max_utterance_s`` is cut at its last pause ≥ 98 ms (or where it is).

A pause inside a sentence (a breath, a comma) is often as long as one between sentences, and
an utterance cut there is decoded without its end. So with ``hold_silence_ms`` longer than
``min_silence_ms``, ``min_silence_ms`` of silence only reports a :class:`Paused`; the caller
decides (by decoding what was said) whether the utterance is complete and ends it there with
:meth:`ChannelVad.end_at_pause`; otherwise it closes after ``hold_silence_ms``, or goes on if
speech resumes first.

Everything here is synchronous numpy/onnx code without I/O, run by the engine in a worker
thread. Positions are absolute sample indices at 8 kHz in call time (``t_ms * 8``).

Over 300 lines on purpose: the incremental Silero VAD with its carried state; its two halves
(model call, utterance cutting) share that state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.audio import upsample2

WINDOW_8K = 256
"""Samples at 8 kHz per VAD window (512 at 16 kHz = 32 ms)."""
_WINDOW_16K = 2 * WINDOW_8K
_CONTEXT_16K = 64
_MARGIN_8K = 64
"""8 kHz samples on each side of an upsampled block, so FFT edge effects stay out of the VAD."""
THRESHOLD = 0.5
NEG_THRESHOLD = 0.35
_SHORT_PAUSE_8K = 98 * 8


@dataclass(frozen=True, slots=True)
class Opened:
    """Speech started at ``start8`` (8 kHz samples, call time); decode from ``start8 - pad_before8``."""

    start8: int
    pad_before8: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The utterance ``[start8, end8)`` ended; ``pad_before8``/``pad_after8`` = context to decode.

    ``endpoint`` is False when the utterance was cut at the longest allowed length (the speaker
    goes on). ``keep`` is False for a blip shorter than the minimum speech length.
    """

    start8: int
    end8: int
    pad_before8: int
    pad_after8: int
    endpoint: bool = True
    keep: bool = True


@dataclass(frozen=True, slots=True)
class Paused:
    """``min_silence_ms`` of silence after speech ending at ``end8``; the utterance is still open.

    Reported once per pause. :meth:`ChannelVad.end_at_pause` closes the utterance there.
    """

    start8: int
    end8: int


VadEvent = Opened | Paused | Closed


class SampleBuffer:
    """A growable float32 buffer addressed by absolute sample index; drops its head on ``trim``."""

    def __init__(self, origin: int, capacity: int = 8000 * 8) -> None:
        self._data = np.zeros(capacity, dtype=np.float32)
        self.origin = origin
        """Absolute index of the first sample held."""
        self.end = origin
        """Absolute index one past the last sample held."""

    def append(self, x: np.ndarray) -> None:
        """Copy ``x`` (float32, shape ``(n,)``) after the last sample; grows by doubling."""
        n, used = len(x), self.end - self.origin
        if used + n > len(self._data):
            grown = np.zeros(max(2 * len(self._data), used + n), dtype=np.float32)
            grown[:used] = self._data[:used]
            self._data = grown
        self._data[used : used + n] = x
        self.end += n

    def view(self, a: int, b: int) -> np.ndarray:
        """Samples ``[a, b)`` clipped to what is held (a view, valid until the next append)."""
        a, b = max(a, self.origin), min(b, self.end)
        if b <= a:
            return self._data[:0]
        return self._data[a - self.origin : b - self.origin]

    def trim(self, before: int) -> None:
        """Forget every sample before absolute index ``before``."""
        cut = min(before, self.end) - self.origin
        if cut <= 0:
            return
        used = self.end - self.origin
        self._data[: used - cut] = self._data[cut:used]
        self.origin += cut

    def reset(self, origin: int) -> None:
        """Drop everything and restart at absolute index ``origin``."""
        self.origin = self.end = origin


class ChannelVad:
    """One channel's audio, VAD state and utterance cutter.

    Feed 8 kHz float32 samples with :meth:`append`, then :meth:`advance` returns the
    :data:`VadEvent` s found in every complete window; :meth:`flush` closes an open utterance
    at the end of the audio. :meth:`clip` gives 16 kHz audio of any span still held. Memory is
    bounded: audio older than the open utterance (less ``keep_back8``) is dropped on advance.

    ``model``: a ``faster_whisper.vad.SileroVADModel`` (its onnxruntime ``session``).
    ``min_silence_ms``: silence that closes an utterance, or with ``hold_silence_ms`` longer,
    that reports a :class:`Paused`. ``hold_silence_ms``: silence that closes an utterance in
    any case (None = ``min_silence_ms``). ``max_utterance_s``: longest utterance.
    ``pad_ms``: audio to decode after an utterance's end; ``pad_before_ms``: before its start
    (None = ``pad_ms``; Silero's start can come a few hundred ms after a soft first word).
    ``min_speech_ms``: shorter utterances are reported with ``keep=False``.
    """

    def __init__(
        self,
        model: Any,
        origin8: int,
        *,
        min_silence_ms: int,
        max_utterance_s: float,
        hold_silence_ms: int | None = None,
        pad_ms: int = 400,
        pad_before_ms: int | None = None,
        min_speech_ms: int = 100,
    ) -> None:
        self._session = model.session
        self.buffer = SampleBuffer(origin8)
        self._min_silence8 = min_silence_ms * 8
        self._hold8 = max(min_silence_ms, hold_silence_ms or 0) * 8
        self._max_len8 = int(max_utterance_s * 8000)
        self.pad8 = pad_ms * 8
        self.pad_before8 = (pad_ms if pad_before_ms is None else pad_before_ms) * 8
        self._min_speech8 = min_speech_ms * 8
        self.keep_back8 = max(self.pad8, self.pad_before8) + _MARGIN_8K + 8000
        self._reset_state(origin8)

    def _reset_state(self, origin8: int) -> None:
        self.position8 = origin8
        """Absolute index up to which VAD has run (a window boundary)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_16K, dtype=np.float32)
        self.open_start8: int | None = None
        """Start of the utterance now open, or None."""
        self._pad_before8 = self.pad_before8
        self._temp_end: int | None = None
        self._prev_end: int | None = None
        self._next_start: int | None = None
        self._paused = False
        self.last_speech8 = origin8
        """End of the last window that was not silence (probability ≥ 0.35)."""

    def append(self, x8: np.ndarray) -> None:
        """Add float32 8 kHz samples ``(n,)`` after the last ones."""
        self.buffer.append(x8)

    def clip(self, a8: int, b8: int) -> np.ndarray:
        """16 kHz float32 audio of ``[a8, b8)`` (8 kHz indices), clipped to what is held."""
        return upsample2(self.buffer.view(a8, b8))

    def advance(self) -> list[VadEvent]:
        """Run VAD over every complete window received (less a small margin); return events."""
        keep = self.position8 if self.open_start8 is None else self.open_start8
        self.buffer.trim(min(keep, self.position8) - self.keep_back8)
        n = (self.buffer.end - _MARGIN_8K - self.position8) // WINDOW_8K
        if n <= 0:
            return []
        return self._run(n, self.buffer.end)

    def flush(self) -> list[VadEvent]:
        """The audio ended: run the last (zero-padded) windows and close any open utterance."""
        end8 = self.buffer.end
        n = -(-(end8 - self.position8) // WINDOW_8K)
        events = self._run(n, end8) if n > 0 else []
        if self.open_start8 is not None:
            stop = end8 if self._temp_end is None else self._temp_end
            events.append(self._close(stop, endpoint=True))
        return events

    def end_at_pause(self, end8: int) -> Closed | None:
        """Close the open utterance at the pause a :class:`Paused` reported, if still in it.

        Returns the :class:`Closed` event, or None when speech resumed since (or the utterance
        already closed): then the utterance goes on.
        """
        if self.open_start8 is None or self._temp_end != end8 or not self._paused:
            return None
        return self._close(end8, endpoint=True)

    def jump(self, origin8: int) -> list[VadEvent]:
        """A discontinuity: flush, then restart empty at ``origin8`` (events of the flush)."""
        events = self.flush()
        self.buffer.reset(origin8)
        self._reset_state(origin8)
        return events

    # ------------------------------------------------------------------ internals

    def _run(self, n: int, limit8: int) -> list[VadEvent]:
        a8, b8 = self.position8, self.position8 + n * WINDOW_8K
        lo, hi = max(a8 - _MARGIN_8K, self.buffer.origin), min(b8 + _MARGIN_8K, limit8)
        up = upsample2(self.buffer.view(lo, hi))
        x16 = up[2 * (a8 - lo) : 2 * (a8 - lo) + 2 * (b8 - a8)]
        if len(x16) < n * _WINDOW_16K:  # the final partial window at the end of the audio
            x16 = np.pad(x16, (0, n * _WINDOW_16K - len(x16)))
        probs = self._probs(x16.reshape(n, _WINDOW_16K))
        events: list[VadEvent] = []
        for i, p in enumerate(probs):
            self._step(a8 + i * WINDOW_8K, float(p), events)
        self.position8 = b8
        return events

    def _probs(self, windows: np.ndarray) -> np.ndarray:
        before = np.concatenate([self._context[None, :], windows[:-1, -_CONTEXT_16K:]], axis=0)
        batch = np.concatenate([before, windows], axis=1)
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -_CONTEXT_16K:].copy()
        return np.asarray(out).reshape(-1)

    def _step(self, pos: int, p: float, events: list[VadEvent]) -> None:
        if p >= NEG_THRESHOLD:
            self.last_speech8 = pos + WINDOW_8K
        if p >= THRESHOLD and self._temp_end is not None:
            self._temp_end, self._paused = None, False
            if self._prev_end is not None and (
                self._next_start is None or self._next_start < self._prev_end
            ):
                self._next_start = pos
        if self.open_start8 is None:
            if p >= THRESHOLD:
                self.open_start8 = pos
                events.append(Opened(pos, self._pad_before8))
            return
        if pos - self.open_start8 > self._max_len8:
            self._cut(pos, events)
            return
        if p < NEG_THRESHOLD:
            if self._temp_end is None:
                self._temp_end = pos
            if pos - self._temp_end > _SHORT_PAUSE_8K:
                self._prev_end = self._temp_end
            if pos - self._temp_end >= self._hold8:
                events.append(self._close(self._temp_end, endpoint=True))
            elif pos - self._temp_end >= self._min_silence8 and not self._paused:
                self._paused = True
                events.append(Paused(self.open_start8, self._temp_end))

    def _cut(self, pos: int, events: list[VadEvent]) -> None:
        """The open utterance reached the longest allowed: cut at its last pause, or here."""
        prev_end, resume = self._prev_end, self._next_start
        if prev_end is None:
            events.append(self._close(pos, endpoint=False))
            self.open_start8, self._pad_before8 = pos, 0
            events.append(Opened(pos, 0))
            return
        events.append(self._close(prev_end, endpoint=False))
        if resume is not None and resume >= prev_end:  # speech resumed after that pause
            self.open_start8, self._pad_before8 = resume, 0
            events.append(Opened(resume, 0))

    def _close(self, end8: int, *, endpoint: bool) -> Closed:
        start8 = end8 if self.open_start8 is None else self.open_start8
        event = Closed(
            start8=start8,
            end8=end8,
            pad_before8=self._pad_before8,
            pad_after8=self.pad8 if endpoint else 0,
            endpoint=endpoint,
            keep=end8 - start8 >= self._min_speech8,
        )
        self.open_start8 = None
        self._pad_before8 = self.pad_before8
        self._temp_end = self._prev_end = self._next_start = None
        self._paused = False
        return event
