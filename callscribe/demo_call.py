"""The call of ``callscribe demo``: wait for the services, watch the call, stream it, await its end.

Every step waits for the first of what it needs, the call's watcher ending, or ``stop``
(:func:`first`); every task it starts is cancelled on the way out, whatever the way
(:class:`contextlib.AsyncExitStack`), so no step nests another's clean-up. The status is 0
once the call has ended and its last final is shown, 1 on a failure (each with a line that
says why), 130 when ``stop`` was set from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from callscribe.render import CallRenderer
from callscribe.twilio_client import SimCall, stream_call
from callscribe.twilio_messages import new_sid
from callscribe.watch import Watcher
from callscribe.watch_options import WatchOptions
from shared.aio import cancel_and_wait

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0
"""How long the services may take to listen (the Whisper model loads first), s."""


async def first(*aws: Any) -> None:
    """Wait until the first of ``aws`` (tasks or coroutines) completes; cancel the coroutines."""
    tasks = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in aws]
    owned = [t for t, a in zip(tasks, aws, strict=True) if t is not a]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in owned:
            await cancel_quietly(t)


async def cancel_quietly(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it; its own errors are logged, not raised (the caller's
    cancellation is)."""
    try:
        await cancel_and_wait(task)
    except Exception as exc:
        log.warning("demo task failed", extra={"task": task, "error": type(exc).__name__})


@dataclass
class DemoCall:
    """One demo call of ``tracks`` (mu-law 8 kHz, one per Twilio track) read from ``audio``.

    ``speed``: pace multiplier (1.0 = real time, 0 = as fast as possible). Once streamed, its
    end must be shown within ``end_grace_s`` plus ``end_per_audio_s`` per second of audio (a
    backlog to transcribe), else the demo fails rather than hang.
    """

    tracks: list[bytes]
    audio: Path
    speed: float
    out: TextIO
    stop: asyncio.Event
    end_grace_s: float = 60.0
    end_per_audio_s: float = 2.0
    _tasks: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def say(self, text: str) -> None:
        """One line of the demo's own narration on ``out``."""
        print(text, file=self.out, flush=True)

    async def run(
        self, ingest_bound: asyncio.Future[int], gateway_bound: asyncio.Future[int]
    ) -> int:
        """Serve the call once both services listen (their ports resolve the futures)."""
        async with self._tasks:
            stopped = self._start(self.stop.wait(), "demo-stopped")
            try:
                ports = await self._ports(ingest_bound, gateway_bound, stopped)
                if ports is None:
                    return 130 if stopped.done() else 1
                call, watcher = self._announce(*ports)
                watching = self._start(watcher.run(), "demo-watch")
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    await first(watcher.ready.wait(), watching, stopped)
            except TimeoutError:
                self.say("the services did not start in time")
                return 1
            if stopped.done() or watching.done():
                return 130 if stopped.done() else 1
            ingest_url = f"ws://127.0.0.1:{ports[0]}/twilio"
            return await self._stream(ingest_url, call, watcher, watching, stopped)

    def _start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task that is cancelled when :meth:`run` returns (the last started, first)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.push_async_callback(cancel_quietly, task)
        return task

    async def _ports(
        self,
        ingest_bound: asyncio.Future[int],
        gateway_bound: asyncio.Future[int],
        stopped: asyncio.Task[Any],
    ) -> tuple[int, int] | None:
        """Both ports once bound; None when stopped or a service failed to start.

        Raises:
            TimeoutError: not bound within :data:`STARTUP_TIMEOUT_S`.
        """
        bounds = (ingest_bound, gateway_bound)
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            # asyncio.wait, not gather: leaves the futures alone when stopped (a cancelled
            # gather would cancel them and log "exception was never retrieved")
            await first(asyncio.wait(bounds, return_when=asyncio.FIRST_EXCEPTION), stopped)
        if stopped.done() or any(f.done() and not f.cancelled() and f.exception() for f in bounds):
            return None
        return ingest_bound.result(), gateway_bound.result()

    def _announce(self, ingest_port: int, gateway_port: int) -> tuple[SimCall, Watcher]:
        """Say where the services listen; the call to stream and its watcher."""
        gateway_url = f"ws://127.0.0.1:{gateway_port}"
        self.say(f"ingest  : ws://127.0.0.1:{ingest_port}/twilio  (Twilio Media Streams)")
        self.say(f"gateway : http://127.0.0.1:{gateway_port}/  (web page)")
        self.say(f"watch from another terminal: callscribe watch --gateway {gateway_url}")
        call = SimCall(
            tracks=self.tracks,
            call_sid=new_sid("CA"),
            stream_sid=new_sid("MZ"),
            account_sid=new_sid("AC"),
            custom_parameters={"demo": "1"},
        )
        options = WatchOptions(url=gateway_url, call_sid=call.call_sid, wait_for_start=True)
        return call, Watcher(options, CallRenderer(self.out))

    async def _stream(
        self,
        ingest_url: str,
        call: SimCall,
        watcher: Watcher,
        watching: asyncio.Task[int],
        stopped: asyncio.Task[Any],
    ) -> int:
        """Stream the call and wait (bounded) for its watcher to see the end."""
        seconds = len(self.tracks[0]) / 8000
        self.say(
            f"streaming {self.audio.name} ({seconds:.1f} s, {len(self.tracks)} tracks) "
            f"as call {call.call_sid} at {self.speed:g}x"
        )
        t0 = time.monotonic()
        streaming = self._start(stream_call(ingest_url, call, speed=self.speed), "demo-stream")
        self._start(self._time_first(watcher, t0), "demo-timing")
        await first(watching, streaming, stopped)
        if stopped.done():
            return 130
        if not watching.done():  # the call is streamed: wait for its end, bounded (never hang)
            if streaming.exception() is not None:
                watcher.renderer.note(f"streaming failed: {streaming.exception()}")
                return 1
            end_timeout_s = self.end_grace_s + self.end_per_audio_s * seconds
            try:
                async with asyncio.timeout(end_timeout_s):
                    await first(watching, stopped)
            except TimeoutError:
                watcher.renderer.note(f"the call did not end within {end_timeout_s:.0f} s")
                return 1
            if stopped.done():
                return 130
        return watching.result()

    async def _time_first(self, watcher: Watcher, t0: float) -> None:
        await watcher.first_transcript.wait()
        watcher.renderer.note(
            f"first transcript {time.monotonic() - t0:.1f} s after the call started"
        )
