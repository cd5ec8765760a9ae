"""A call's transcription checkpoint and the result filter it implies; no I/O.

A call is transcribed by one worker at a time, but not always by the same one (a worker dies,
stops, or loses the call to another), and a Deepgram connection can drop and be replayed. Either
way some audio is recognised twice. What keeps every span of a channel finalised once:

* :class:`FinalEnds`: per channel, the call time (s) its last final ends at. A result ending no
  later (within :data:`EPS_S`) is of audio already finalised and is dropped. Shared by the call
  pipeline (:mod:`services.transcriber.call`) and the Deepgram session's result handling
  (:mod:`services.transcriber.dgresults`).
* :func:`words_after`: a result that straddles its channel's last final keeps only the words
  after it.
* :class:`Checkpoint`: the final ends, the first free segment number and the last audio entry
  every channel's finals cover. It is stored in the call's meta hash, in the same transaction as
  each final (:mod:`services.transcriber.call_store`), as the fields ``resume_audio_id``,
  ``next_segment`` and ``final_end_s_<ch>``; a worker taking the call over reads the audio after
  ``resume_audio_id`` and filters with the stored final ends.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from shared.schema import TranscriptEvent

EPS_S = 0.002
"""Slack when comparing a result's end with a channel's last final, s (times are rounded to ms)."""

MAX_FRAMES = 100_000
"""Frames remembered between the checkpoint and the newest frame sent (2.8 h of 100 ms frames)."""


class FinalEnds:
    """Per channel, the call time up to which it is finalised, s (``ends[ch]``)."""

    def __init__(self, ends: list[float]) -> None:
        self.ends = ends

    def done(self, channel: int, end_s: float) -> bool:
        """True when a result of ``channel`` ending at ``end_s`` (call time, s) is of audio
        already finalised, or of a channel the call does not have."""
        return not 0 <= channel < len(self.ends) or end_s <= self.ends[channel] + EPS_S

    def advance(self, channel: int, end_s: float) -> None:
        """``channel`` has a final ending at ``end_s`` (s); it never moves back."""
        self.ends[channel] = max(self.ends[channel], end_s)

    @property
    def covered_s(self) -> float:
        """Call time up to which every channel is finalised, s."""
        return min(self.ends)


def words_after(event: TranscriptEvent, done_s: float) -> TranscriptEvent | None:
    """``event`` without the words finalised up to ``done_s`` (call time, s); None if none is left.

    A result that straddles the channel's last final (a resumed or reconnected session starts
    where *every* channel is finalised, so the channel that was ahead hears some words again)
    keeps only the words whose middle lies after ``done_s``; its ``text`` and ``start`` follow.
    """
    words = [w for w in event.words if (w.start + w.end) / 2 > done_s]
    if not words:
        return None
    if len(words) == len(event.words):
        return event
    return event.model_copy(
        update={
            "words": words,
            "text": " ".join(w.word.strip() for w in words),
            "start": round(max(event.start, done_s), 3),
        }
    )


class Checkpoint:
    """How far one call is transcribed: what a worker taking it over resumes from.

    ``channels``: 1 or 2. ``resume_id``: the last audio entry (``"<ms>-<seq>"``, ``"0-0"`` for
    none) that every channel's finals cover. ``next_segment``: the first segment number not
    used by a final. ``final_ends``: per channel, the end of its last final (call time, s).
    """

    def __init__(
        self,
        channels: int,
        resume_id: str = "0-0",
        next_segment: int = 0,
        final_end_s: list[float] | None = None,
    ) -> None:
        self.channels = channels
        self.resume_id = resume_id
        self.next_segment = next_segment
        self.final_ends = FinalEnds(final_end_s or [0.0] * channels)
        self._frames: collections.deque[tuple[str, float]] = collections.deque(maxlen=MAX_FRAMES)
        self._persisted_s = self.final_ends.covered_s

    @classmethod
    def from_meta(cls, fields: Mapping[str, str], channels: int) -> Checkpoint:
        """The checkpoint stored in a call's meta hash (decoded fields); a new one when it holds
        none.

        Raises:
            ValueError: a checkpoint field is not a number.
        """
        return cls(
            channels,
            fields.get("resume_audio_id") or "0-0",
            int(fields.get("next_segment") or 0),
            [float(fields.get(f"final_end_s_{c}") or 0.0) for c in range(channels)],
        )

    def to_meta(self) -> dict[str, str]:
        """The meta hash fields of the checkpoint: ``resume_audio_id``, ``next_segment``,
        ``final_end_s_<ch>`` (s, three decimals)."""
        return {
            "resume_audio_id": self.resume_id,
            "next_segment": str(self.next_segment),
            **{f"final_end_s_{c}": f"{e:.3f}" for c, e in enumerate(self.final_ends.ends)},
        }

    def sent(self, entry_id: str, end_ms: float) -> None:
        """The audio entry ``entry_id``, ending at ``end_ms`` (call time, ms), went to the engine."""
        self._frames.append((entry_id, end_ms))

    @property
    def sent_ms(self) -> float | None:
        """Call time up to which audio went to the engine, ms (None before the first frame)."""
        return self._frames[-1][1] if self._frames else None

    def admit(self, event: TranscriptEvent) -> TranscriptEvent | None:
        """``event`` as far as it is new: None when its channel is finalised past its end, else
        the event without the words finalised already (:func:`words_after`)."""
        ends = self.final_ends
        if ends.done(event.channel, event.end):
            return None
        done_s = ends.ends[event.channel]
        if event.start < done_s - EPS_S and event.words:
            return words_after(event, done_s)
        return event

    def advance(self, event: TranscriptEvent) -> None:
        """``event`` is final: its channel is finalised up to its end, its segment is used, and
        the resume point moves past every frame all channels now cover."""
        self.final_ends.advance(event.channel, event.end)
        self.next_segment = max(self.next_segment, event.segment + 1)
        covered_ms = self.final_ends.covered_s * 1000.0
        while self._frames and self._frames[0][1] <= covered_ms + 0.5:
            self.resume_id = self._frames.popleft()[0]

    def unsaved_s(self) -> float:
        """How far the covered time moved since the checkpoint was last :meth:`saved`, s."""
        return self.final_ends.covered_s - self._persisted_s

    def saved(self) -> None:
        """The checkpoint as it is now was written to Redis."""
        self._persisted_s = self.final_ends.covered_s
