"""One call's audio between the worker's reader and its ASR session, and when it went still.

The worker's audio reader (:mod:`services.transcriber.worker`) XREADs many calls' streams in one
round and hands each call's entries to its :class:`CallInbox`; the call's pipeline
(:mod:`services.transcriber.call`) takes them out one by one. The queue is bounded, so a call
whose engine is slow is left out of the reader's rounds and its backlog stays in Redis. A wait
that times out asks :class:`~services.transcriber.stall.AudioWatch` what the stillness means.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.transcriber.stall import AudioWatch, Stillness
from shared.redisconn import as_text
from shared.schema import AudioFrame, AudioResumed, AudioStopped

log = logging.getLogger(__name__)

QUEUE_FRAMES = 50
"""Frames buffered per call between the audio reader and the ASR session (5 s of 100 ms frames)."""


class CallInbox:
    """The queue of call ``sid``'s audio entries ``(entry_id, frame)``, at most :data:`QUEUE_FRAMES`.

    Args:
        sid: the callSid, for logs and events.
        watch: the call's audio clock (``AUDIO_STALL_S``, ``AUDIO_IDLE_S``).
        wake: set whenever the queue has room again, so the reader adds the call back.
        stalled: ``stalled(last_id)`` is True when nothing newer than ``last_id`` is in the
            call's audio stream (Redis answering).
        say: publishes ``audio_stopped`` / ``audio_resumed`` on the call's live channel.
        heard_s: call time up to which audio reached the engine, s.
    """

    def __init__(
        self,
        sid: str,
        watch: AudioWatch,
        wake: asyncio.Event,
        stalled: Callable[[str], Awaitable[bool]],
        say: Callable[[AudioStopped | AudioResumed], None],
        heard_s: Callable[[], float],
    ) -> None:
        self.sid = sid
        self.queue: asyncio.Queue[tuple[str, AudioFrame]] = asyncio.Queue(QUEUE_FRAMES)
        self.last_id = "0-0"  # the last entry delivered (or the checkpoint's, before any)
        self.open = False  # the reader may include the call
        self.eof_read = False
        self.idled_out = False  # the eof was made up after AUDIO_IDLE_S of stillness
        self._watch = watch
        self._wake = wake
        self._stalled = stalled
        self._say = say
        self._heard_s = heard_s

    def start(self, after_id: str) -> None:
        """Let the reader in, reading the audio entries after ``after_id``."""
        self.last_id = after_id
        self.open = True
        self._wake.set()

    def wants(self, count: int) -> bool:
        """True when the call can take ``count`` more frames from the audio stream."""
        return self.open and not self.eof_read and QUEUE_FRAMES - self.queue.qsize() >= count

    def deliver(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Queue one audio entry (the reader checked there is room); a bad entry is skipped."""
        self.last_id = as_text(entry_id)
        try:
            frame = AudioFrame.from_redis(fields)
        except ValueError:
            log.warning(
                "bad audio entry skipped", extra={"call_sid": self.sid, "entry": self.last_id}
            )
            return
        if frame.eof:
            self.eof_read = True
        self.queue.put_nowait((self.last_id, frame))

    async def next(self) -> tuple[str, AudioFrame]:
        """The next audio entry; ``audio_stopped`` once the stream has been still for
        ``audio_stall_s`` (``audio_resumed`` when a frame comes after it), a made-up eof once it
        has been still for ``audio_idle_s`` (services/transcriber/stall.py says why)."""
        watch = self._watch
        while True:
            try:
                async with asyncio.timeout(watch.timeout_s()):
                    item = await self.queue.get()
            except TimeoutError:
                if not await self._stalled(self.last_id):
                    watch.alive()
                    continue
                verdict = watch.timed_out()
                if verdict is Stillness.STOPPED:
                    idle_s = round(watch.still_for_s(), 3)
                    self._say(AudioStopped(call_sid=self.sid, at_s=self._heard_s(), idle_s=idle_s))
                if verdict is not Stillness.ENDED:
                    continue
                log.warning(
                    "audio stopped without eof; call ended",
                    extra={"call_sid": self.sid, "idle_s": watch.idle_s},
                )
                self.eof_read = self.idled_out = True
                return self.last_id, AudioFrame(t_ms=round(self._heard_s() * 1000), eof=True)
            if watch.heard():
                self._say(AudioResumed(call_sid=self.sid, at_s=item[1].t_ms / 1000))
            self._wake.set()
            return item
