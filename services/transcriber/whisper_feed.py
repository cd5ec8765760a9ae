"""The frame side of a Whisper session: queueing, back-pressure, gaps, lifecycle.

:class:`FrameFeed` implements the :class:`~services.transcriber.engine.AsrSession` lifecycle
(``send``, ``finish``, ``aclose``, plus ``drain``) for a session that processes frames in its
own task: ``send`` queues an interleaved mu-law frame; the task takes frames in order, puts
them in place in call time (a frame overlapping audio already taken is trimmed, a gap up to
``MAX_GAP_FILL_S`` is filled with silence, a longer jump flushes and restarts), decodes mu-law
to float32 per channel and hands the samples to the subclass's hooks in a worker thread, then
awaits the subclass's handling of the resulting events on the loop. A subclass implements
``_channels_append``, ``_flush``, ``_restart`` (run in ``pool``) and ``_handle`` (async).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any

import numpy as np

from services.transcriber.engine import CallAudio
from shared.aio import cancel_and_wait
from shared.audio import BYTES_PER_MS, deinterleave, ulaw_to_float32
from shared.errors import AsrError, CallscribeError

log = logging.getLogger(__name__)

MAX_GAP_FILL_S = 60.0
"""A jump forward in ``t_ms`` up to this long is filled with silence; a longer one restarts VAD."""

Events = list[tuple[int, Any]]
"""(channel, event) pairs, in the order they happened."""


class FrameFeed:
    """Frames in, one processing task, the session lifecycle (see the module docstring).

    ``pool``: where the blocking hooks run. ``backlog_max_s``: ``send`` waits while more audio
    than this (s) is queued. ``interim_max_lag_s``: ``_handle`` is told to skip interims while
    the frame being processed arrived longer ago than this (s). ``stats``: counters logged when
    the session closes.
    """

    def __init__(
        self,
        call: CallAudio,
        pool: Executor,
        *,
        backlog_max_s: float,
        interim_max_lag_s: float,
    ) -> None:
        self.call = call
        self._pool = pool
        self._backlog_max8 = int(backlog_max_s * 8000)
        self._interim_max_lag_s = interim_max_lag_s
        self._pending: deque[tuple[int, bytes, float]] = deque()
        self._pending8 = 0
        self._next8 = call.start_ms * BYTES_PER_MS  # where the next frame should start
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._eof = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._audio8 = 0
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------------ hooks

    def _channels_append(self, samples: list[np.ndarray], gap8: int) -> Events:
        """Worker thread: ``gap8`` samples of silence then ``samples`` (float32 per channel)."""
        raise NotImplementedError

    def _flush(self) -> Events:
        """Worker thread: the audio ended; close whatever is open."""
        raise NotImplementedError

    def _restart(self, t8: int) -> None:
        """Worker thread: after a long jump (and a flush), restart empty at 8 kHz index ``t8``."""
        raise NotImplementedError

    async def _handle(self, events: Events, interims: bool) -> None:
        """Loop: act on events (``interims`` False: the session lags, skip interims)."""
        raise NotImplementedError

    async def _deliver(self) -> None:
        """Loop: publish what background work finished (set ``_wake`` when some does)."""

    def _busy(self) -> bool:
        """Background work is in flight (the session is not idle)."""
        return False

    def _discard(self) -> None:
        """The session stops: cancel background work."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the session's processing task."""
        self._task = asyncio.create_task(self._run(), name=f"whisper:{self.call.call_sid}")
        log.info(
            "whisper session opened",
            extra={"call_sid": self.call.call_sid, "channels": self.call.channels},
        )

    async def send(self, t_ms: int, pcmu: bytes) -> None:
        """Queue one interleaved mu-law frame starting at ``t_ms`` (ms of call time).

        Waits while more than ``backlog_max_s`` of audio is queued. A trailing partial sample is
        dropped (logged); a frame that overlaps audio already sent is trimmed; a gap is silence.

        Raises:
            AsrError: the session is finished or closed, or its processing failed.
        """
        self._raise_if_failed()
        if self._eof or self._closed:
            raise AsrError("audio sent to a finished whisper session", retryable=False)
        channels = self.call.channels
        if len(pcmu) % channels:
            log.warning(
                "frame is not whole samples; tail dropped",
                extra={"call_sid": self.call.call_sid, "bytes": len(pcmu)},
            )
            pcmu = pcmu[: len(pcmu) - len(pcmu) % channels]
        if not pcmu:
            return
        self._pending.append((t_ms * BYTES_PER_MS, pcmu, time.monotonic()))
        self._pending8 += len(pcmu) // channels
        self._idle.clear()
        self._wake.set()
        while self._pending8 > self._backlog_max8:
            self._room.clear()
            await self._room.wait()
            self._raise_if_failed()

    async def drain(self) -> None:
        """Wait until every frame sent so far is processed and its results delivered.

        That includes background work (interims) started for them.

        Raises:
            AsrError: processing failed.
        """
        task = self._task
        while task is not None and not task.done() and not self._idle.is_set():
            idle = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({idle, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
        self._raise_if_failed()

    async def finish(self, timeout_s: float) -> None:
        """Close every open utterance at the audio end and deliver the finals (≤ ``timeout_s``).

        On timeout the rest is abandoned and logged. Raises:
            AsrError: processing failed (finals may be missing); errors of ``on_result`` as raised.
        """
        if self._closed or self._task is None:
            return
        self._eof = True
        self._wake.set()
        try:
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                log.warning(
                    "whisper finish timed out; finals abandoned",
                    extra={"call_sid": self.call.call_sid, "timeout_s": timeout_s},
                )
        finally:
            await self._stop()
        self._raise_if_failed()

    async def aclose(self) -> None:
        """Abandon the session at once: stop processing, deliver nothing more. Idempotent."""
        self._eof = True
        await self._stop()

    # ------------------------------------------------------------------ internals

    def _raise_if_failed(self) -> None:
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if isinstance(exc, CallscribeError):
            raise exc
        raise AsrError(f"whisper session failed: {exc!r}", retryable=False) from exc

    async def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            # its failure is reported by _raise_if_failed; the close line below still logs
            with contextlib.suppress(Exception):
                await cancel_and_wait(task)
        self._discard()
        self._room.set()
        self._idle.set()
        log.info(
            "whisper session closed",
            extra={
                "call_sid": self.call.call_sid,
                "audio_s": round(self._audio8 / 8000, 1),
                **self.stats,
            },
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        max_fill8 = int(MAX_GAP_FILL_S * 8000)
        try:
            while True:
                self._wake.clear()
                await self._deliver()
                if not self._pending:
                    if self._eof:
                        break
                    if not self._busy():
                        self._idle.set()
                    await self._wake.wait()
                    continue
                t8, data, arrival = self._pending.popleft()
                self._pending8 -= len(data) // self.call.channels
                if self._pending8 <= self._backlog_max8:
                    self._room.set()
                if t8 - self._next8 > max_fill8:  # a long jump: close what is open, restart
                    await self._handle(await loop.run_in_executor(self._pool, self._flush), False)
                    await loop.run_in_executor(self._pool, self._restart, t8)
                    self._next8 = t8
                events = await loop.run_in_executor(self._pool, self._advance, t8, data)
                lag_s = time.monotonic() - arrival
                await self._handle(events, lag_s <= self._interim_max_lag_s)
            await self._handle(await loop.run_in_executor(self._pool, self._flush), False)
        finally:
            self._room.set()
            self._idle.set()

    def _advance(self, t8: int, data: bytes) -> Events:
        """Worker thread: put one frame in place (trim overlap, fill gaps), run the hooks."""
        channels = self.call.channels
        n = len(data) // channels
        if t8 < self._next8:
            skip = self._next8 - t8
            if skip >= n:
                return []
            data, n, t8 = data[skip * channels :], n - skip, self._next8
        gap8 = t8 - self._next8
        samples = [ulaw_to_float32(c) for c in deinterleave(data, channels)]
        events = self._channels_append(samples, gap8)
        self._next8 = t8 + n
        self._audio8 += n
        return events
