"""A scripted ASR engine, and serving one call through CallPipeline's public interface with it.

The pipeline is driven as the worker drives it: audio entries read from the call's audio stream
go in through :meth:`CallPipeline.deliver`, :meth:`CallPipeline.run` serves the call to its end,
and the engine's results reach the pipeline through the ``on_result`` callback it was opened
with, as any engine's do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as aioredis

from services.transcriber.call import CallPipeline
from services.transcriber.engine import CallAudio, OnResult
from shared import keys
from shared.aio import cancel_and_wait
from shared.audio import BYTES_PER_MS
from shared.errors import AsrError
from shared.replies import entries
from shared.schema import AudioFrame, TranscriptEvent
from shared.settings import TranscriberSettings

SERVE_TIMEOUT_S = 15.0
"""Bound on serving one scripted call; only reached when the pipeline hangs."""


class ScriptedSession:
    """Accepts any audio; at :meth:`finish` delivers its results in order, as an engine flushing
    its last finals does, then raises ``fail_with`` if given (recognition failed for good)."""

    def __init__(
        self,
        results: Sequence[TranscriptEvent],
        on_result: OnResult,
        fail_with: AsrError | None = None,
    ) -> None:
        self.results = results
        self.on_result = on_result
        self.fail_with = fail_with
        self.sent_ms: list[int] = []

    async def send(self, t_ms: int, pcmu: bytes) -> None:
        """Record the frame's call time."""
        self.sent_ms.append(t_ms)

    async def finish(self, timeout_s: float) -> None:
        """Deliver every scripted result (copies, so a script can be served twice).

        Raises:
            AsrError: ``fail_with``, after the results.
        """
        for event in self.results:
            await self.on_result(event.model_copy(deep=True))
        if self.fail_with is not None:
            raise self.fail_with

    async def aclose(self) -> None:
        """Nothing to release."""


class ScriptedEngine:
    """An :class:`~services.transcriber.engine.AsrEngine` whose every session delivers
    ``results``; ``sessions`` keeps what each session was opened for and sent."""

    name = "scripted"

    def __init__(
        self, results: Sequence[TranscriptEvent], fail_with: AsrError | None = None
    ) -> None:
        self.results = list(results)
        self.fail_with = fail_with
        self.sessions: list[tuple[CallAudio, ScriptedSession]] = []

    async def open(self, call: CallAudio, on_result: OnResult) -> ScriptedSession:
        """A session for ``call`` that will deliver the script to ``on_result``."""
        session = ScriptedSession(self.results, on_result, self.fail_with)
        self.sessions.append((call, session))
        return session

    async def aclose(self) -> None:
        """Nothing to release."""


async def serve_call(
    redis: aioredis.Redis,
    sid: str,
    results: Sequence[TranscriptEvent],
    settings: TranscriberSettings,
    *,
    audio_ms: int = 100,
    job_id: str = "1-0",
    fail_with: AsrError | None = None,
) -> CallPipeline:
    """Serve call ``sid`` (its meta, and any checkpoint, already in ``cs:{sid}:meta``) with a
    :class:`ScriptedEngine` delivering ``results`` (then failing with ``fail_with``, if given);
    returns the pipeline once the call ended.

    ``audio_ms`` of stereo silence and the eof are written to the call's audio stream and
    delivered as the worker's reader would; the pipeline's live publisher runs meanwhile.

    Raises:
        TimeoutError: the call did not end within :data:`SERVE_TIMEOUT_S`.
    """
    pcmu = b"\xff" * (BYTES_PER_MS * 2 * audio_ms)
    await redis.xadd(keys.audio(sid), AudioFrame(t_ms=0, pcmu=pcmu).to_redis())  # type: ignore[arg-type]
    await redis.xadd(keys.audio(sid), AudioFrame(t_ms=audio_ms, eof=True).to_redis())  # type: ignore[arg-type]
    call = CallPipeline(
        sid, job_id, redis, ScriptedEngine(results, fail_with), settings, asyncio.Event()
    )
    for entry_id, fields in entries(await redis.xrange(keys.audio(sid))):
        call.deliver(entry_id, fields)
    publishing = asyncio.create_task(call.live.run())
    try:
        async with asyncio.timeout(SERVE_TIMEOUT_S):
            await call.run()
    finally:
        await cancel_and_wait(publishing)
    return call
