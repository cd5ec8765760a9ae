"""When a call's audio went still: say so early (``audio_stopped``), end the call late.

Twilio sends a packet every 20 ms per track through silence too, and ingest writes a frame
every 100 ms, so a call's audio stream that gets nothing new for a few seconds is in trouble:
its ingest died, or Twilio stopped sending. Measured under load (docs/architecture.md,
"Redis memory"), the longest gap between two frames reaching a transcriber stays well under a
second, so ``AUDIO_STALL_S`` (5 s) is far from normal jitter and still tells watchers long
before ``AUDIO_IDLE_S`` (60 s) ends the call. A stream that is merely not read yet (Redis
slow, or the reader left the call out while its queue drained) is not still: the pipeline
asks Redis before it calls the audio stopped, and an unanswered question counts as alive.

:class:`AudioWatch` is the pure clock of that policy; ``services.transcriber.call`` does the
I/O (the queue, the XREVRANGE, the PUBLISH).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class Stillness(enum.Enum):
    """What a wait that timed out with nothing new in Redis means."""

    STOPPED = "stopped"
    """Still for ``stall_s``: publish ``audio_stopped`` (once), keep waiting."""
    ENDED = "ended"
    """Still for ``idle_s``: end the call with what was heard."""
    WAIT = "wait"
    """Already said stopped, not yet ``idle_s``: keep waiting."""


class AudioWatch:
    """The audio clock of one call.

    Args:
        stall_s: stillness after which the audio counts as stopped, s (capped at ``idle_s``).
        idle_s: stillness after which the call is ended, s.
        clock: monotonic seconds (tests pass a fake).

    Attributes:
        stopped: ``audio_stopped`` was said and no frame has come since.
    """

    def __init__(
        self, stall_s: float, idle_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_s = min(stall_s, idle_s)
        self.idle_s = idle_s
        self._clock = clock
        self._last_s = clock()
        self.stopped = False

    def timeout_s(self) -> float:
        """How long to wait for the next frame before asking Redis, s (>= 0)."""
        due = self.idle_s if self.stopped else self.stall_s
        return max(0.0, self._last_s + due - self._clock())

    def still_for_s(self) -> float:
        """Seconds since the last frame (or the last sign of audio)."""
        return self._clock() - self._last_s

    def heard(self) -> bool:
        """A frame arrived; True when it ends a stop (``audio_resumed`` is due)."""
        self._last_s = self._clock()
        resumed, self.stopped = self.stopped, False
        return resumed

    def alive(self) -> None:
        """Redis holds audio the reader has not delivered yet, or could not be asked: the clocks
        start again (a stop already said stays said until a frame arrives)."""
        self._last_s = self._clock()

    def timed_out(self) -> Stillness:
        """A wait of :meth:`timeout_s` ended with nothing new in Redis: what to do."""
        if self.still_for_s() >= self.idle_s:
            return Stillness.ENDED
        if self.stopped:
            return Stillness.WAIT
        self.stopped = True
        return Stillness.STOPPED
