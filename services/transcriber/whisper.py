"""The embedded offline engine: faster-whisper on CPU, utterances cut by Silero VAD.

Whisper is not a streaming recogniser. Each channel's audio goes through
:class:`~services.transcriber.vad.ChannelVad`, which cuts it into utterances. While an
utterance is open, the session decodes it so far every ``whisper_interim_s`` of audio and
publishes an interim (``is_final`` False); when ``whisper_min_silence_ms`` of silence closes it
(or it reaches ``whisper_max_utterance_s``), the session decodes it with word timestamps and
publishes the final (``is_final`` and ``speech_final`` True). One segment number per utterance,
allocated when its first event is published, from ``CallAudio.first_segment`` up, across both
channels.

Threads: one engine per worker process loads the model once (lazily, in a thread) and owns two
one-thread pools, one for Whisper (the model itself uses ``whisper_threads`` CPU threads) and
one for VAD, shared by all sessions, so the event loop never runs inference. When a session
lags real time by more than ``interim_max_lag_s`` its interims are skipped; finals never are.
``send`` applies back-pressure once ``backlog_max_s`` of audio waits unprocessed.

faster-whisper: https://github.com/SYSTRAN/faster-whisper (``WhisperModel.transcribe``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.transcriber.engine import CallAudio, OnResult
from services.transcriber.vad import ChannelVad, Closed, Opened, VadEvent
from services.transcriber.whisper_decode import Hypothesis, decode, default_model_path
from shared.audio import BYTES_PER_MS, deinterleave, ulaw_to_float32
from shared.errors import AsrError, CallscribeError
from shared.schema import SPEAKERS, TranscriptEvent
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

MAX_GAP_FILL_S = 60.0
"""A jump forward in ``t_ms`` up to this long is filled with silence; a longer one restarts VAD."""


class WhisperEngine:
    """The ``whisper`` :class:`~services.transcriber.engine.AsrEngine`: one per worker process.

    ``settings``: ``whisper_model`` (a directory, or a model name already in the local
    Hugging Face cache: nothing is ever downloaded; empty = :func:`default_model_path`),
    ``whisper_threads``, ``whisper_interim_s``, ``whisper_min_silence_ms``,
    ``whisper_max_utterance_s``. ``interim_max_lag_s``: interims are skipped while a session
    processes audio that arrived longer ago than this (s). ``backlog_max_s``: ``send`` waits
    while more audio than this (s) is queued in a session.
    """

    name = "whisper"

    def __init__(
        self,
        settings: TranscriberSettings,
        *,
        interim_max_lag_s: float = 2.0,
        backlog_max_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.interim_max_lag_s = interim_max_lag_s
        self.backlog_max_s = backlog_max_s
        self.asr_pool = ThreadPoolExecutor(1, thread_name_prefix="whisper-asr")
        self.vad_pool = ThreadPoolExecutor(1, thread_name_prefix="whisper-vad")
        self._models: tuple[Any, Any] | None = None
        self._load_lock = asyncio.Lock()
        self._closed = False

    async def models(self) -> tuple[Any, Any]:
        """The (Whisper, Silero VAD) models, loaded once in a thread on first use.

        Raises:
            AsrError: the model cannot be loaded (missing directory, not installed); not retryable.
        """
        if self._models is not None:
            return self._models
        async with self._load_lock:
            if self._models is None:
                loop = asyncio.get_running_loop()
                self._models = await loop.run_in_executor(self.asr_pool, self._load)
        return self._models

    def _load(self) -> tuple[Any, Any]:
        path = self.settings.whisper_model or default_model_path()
        started = time.monotonic()
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.vad import get_vad_model

            model = WhisperModel(
                path,
                device="cpu",
                compute_type="int8",
                cpu_threads=self.settings.whisper_threads,
                local_files_only=True,
            )
            vad = get_vad_model()
        except Exception as exc:  # any load failure is final for this configuration
            raise AsrError(
                f"cannot load the Whisper model {Path(path).name!r}: {exc.__class__.__name__}: {exc}",
                retryable=False,
            ) from exc
        log.info(
            "whisper model loaded",
            extra={"model": Path(path).name, "load_s": round(time.monotonic() - started, 2)},
        )
        return model, vad

    async def open(self, call: CallAudio, on_result: OnResult) -> WhisperSession:
        """Start a session for ``call`` (loads the model on first use).

        Raises:
            AsrError: the model cannot be loaded, the engine is closed, or ``call.channels`` is
                not 1 or 2 (not retryable).
        """
        if self._closed:
            raise AsrError("the whisper engine is closed", retryable=False)
        if call.channels not in (1, 2):
            raise AsrError(f"{call.channels} channels: expected 1 or 2", retryable=False)
        model, vad = await self.models()
        session = WhisperSession(self, model, vad, call, on_result)
        session.start()
        return session

    async def aclose(self) -> None:
        """Stop the thread pools (running inference finishes in the background) and drop the model."""
        self._closed = True
        self.asr_pool.shutdown(wait=False, cancel_futures=True)
        self.vad_pool.shutdown(wait=False, cancel_futures=True)
        self._models = None


@dataclass(slots=True)
class _Utterance:
    """The open utterance of one channel, as the session tracks it."""

    start8: int
    pad_before8: int
    last_interim8: int
    segment: int | None = None


class WhisperSession:
    """One call's :class:`~services.transcriber.engine.AsrSession` on the embedded engine.

    ``send`` only queues the frame; one task per session runs VAD and decodes in the engine's
    pools and awaits ``on_result`` for each event, in order. Make it with
    :meth:`WhisperEngine.open`.
    """

    def __init__(
        self, engine: WhisperEngine, model: Any, vad: Any, call: CallAudio, on_result: OnResult
    ) -> None:
        s = engine.settings
        self._engine, self._model, self._call, self._on_result = engine, model, call, on_result
        origin8 = call.start_ms * BYTES_PER_MS
        self._vads = [
            ChannelVad(
                vad,
                origin8,
                min_silence_ms=s.whisper_min_silence_ms,
                max_utterance_s=s.whisper_max_utterance_s,
            )
            for _ in range(call.channels)
        ]
        self._open: list[_Utterance | None] = [None] * call.channels
        self._next_segment = call.first_segment
        self._interim8 = max(1, int(s.whisper_interim_s * 8000))
        self._backlog_max8 = int(engine.backlog_max_s * 8000)
        self._pending: deque[tuple[int, bytes, float]] = deque()
        self._pending8 = 0
        self._next8 = origin8  # where the next frame should start (processor side)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._eof = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._stats = {"finals": 0, "interims": 0, "interims_skipped": 0, "dropped": 0}
        self._audio8 = 0

    def start(self) -> None:
        """Start the session's processing task (called by :meth:`WhisperEngine.open`)."""
        self._task = asyncio.create_task(self._run(), name=f"whisper:{self._call.call_sid}")
        log.info(
            "whisper session opened",
            extra={"call_sid": self._call.call_sid, "channels": self._call.channels},
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
        channels = self._call.channels
        if len(pcmu) % channels:
            log.warning(
                "frame is not whole samples; tail dropped",
                extra={"call_sid": self._call.call_sid, "bytes": len(pcmu)},
            )
            pcmu = pcmu[: len(pcmu) - len(pcmu) % channels]
        if not pcmu:
            return
        self._pending.append((t_ms * BYTES_PER_MS, pcmu, time.monotonic()))
        self._pending8 += len(pcmu) // channels
        self._wake.set()
        while self._pending8 > self._backlog_max8:
            self._room.clear()
            await self._room.wait()
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
                    extra={"call_sid": self._call.call_sid, "timeout_s": timeout_s},
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
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception:  # reported by _raise_if_failed; the close line below still logs
                pass
        self._room.set()
        log.info(
            "whisper session closed",
            extra={
                "call_sid": self._call.call_sid,
                "audio_s": round(self._audio8 / 8000, 1),
                **self._stats,
            },
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pool = self._engine.vad_pool
        max_fill8 = int(MAX_GAP_FILL_S * 8000)
        try:
            while True:
                if not self._pending:
                    if self._eof:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                t8, data, arrival = self._pending.popleft()
                self._pending8 -= len(data) // self._call.channels
                if self._pending8 <= self._backlog_max8:
                    self._room.set()
                if t8 - self._next8 > max_fill8:  # a long jump: close what is open, restart VAD
                    await self._handle(await loop.run_in_executor(pool, self._flush), False)
                    await loop.run_in_executor(pool, self._restart, t8)
                events = await loop.run_in_executor(pool, self._advance, t8, data)
                lag_s = time.monotonic() - arrival
                await self._handle(events, lag_s <= self._engine.interim_max_lag_s)
            await self._handle(await loop.run_in_executor(pool, self._flush), False)
        finally:
            self._room.set()

    def _advance(self, t8: int, data: bytes) -> list[tuple[int, VadEvent]]:
        """Worker thread: put one frame in place (trim overlap, fill gaps), run VAD."""
        channels = self._call.channels
        n = len(data) // channels
        if t8 < self._next8:
            skip = self._next8 - t8
            if skip >= n:
                return []
            data, n, t8 = data[skip * channels :], n - skip, self._next8
        gap = t8 - self._next8
        events: list[tuple[int, VadEvent]] = []
        for ch, samples in enumerate(deinterleave(data, channels)):
            vad = self._vads[ch]
            if gap:
                vad.append(np.zeros(gap, dtype=np.float32))
            vad.append(ulaw_to_float32(samples))
            events.extend((ch, e) for e in vad.advance())
        self._next8 = t8 + n
        self._audio8 += n
        return events

    def _flush(self) -> list[tuple[int, VadEvent]]:
        return [(ch, e) for ch, vad in enumerate(self._vads) for e in vad.flush()]

    def _restart(self, t8: int) -> None:
        for vad in self._vads:
            vad.jump(t8)
        self._next8 = t8

    async def _handle(self, events: list[tuple[int, VadEvent]], interims: bool) -> None:
        for ch, event in events:
            if isinstance(event, Opened):
                self._open[ch] = _Utterance(event.start8, event.pad_before8, event.start8)
            else:
                utterance, self._open[ch] = self._open[ch], None
                await self._final(ch, event, utterance)
        for ch, utterance in enumerate(self._open):
            if utterance is None:
                continue
            position8 = self._vads[ch].position8
            if position8 - utterance.last_interim8 < self._interim8:
                continue
            if interims:
                await self._interim(ch, utterance, position8)
            else:
                self._stats["interims_skipped"] += 1
            utterance.last_interim8 = position8

    async def _decode(self, ch: int, a8: int, b8: int, *, words: bool) -> Hypothesis:
        vad, model = self._vads[ch], self._model

        def job() -> Hypothesis:
            start8 = max(a8, vad.buffer.origin)
            return decode(model, vad.clip(start8, b8), start8 / 8000, words=words)

        return await asyncio.get_running_loop().run_in_executor(self._engine.asr_pool, job)

    def _segment(self, utterance: _Utterance | None) -> int:
        if utterance is not None and utterance.segment is not None:
            return utterance.segment
        segment, self._next_segment = self._next_segment, self._next_segment + 1
        if utterance is not None:
            utterance.segment = segment
        return segment

    async def _interim(self, ch: int, utterance: _Utterance, position8: int) -> None:
        a8 = utterance.start8 - utterance.pad_before8
        hyp = await self._decode(ch, a8, position8, words=False)
        if not hyp.text:
            return
        await self._publish(
            ch, self._segment(utterance), False, False, hyp, utterance.start8, position8
        )
        self._stats["interims"] += 1

    async def _final(self, ch: int, closed: Closed, utterance: _Utterance | None) -> None:
        published = utterance is not None and utterance.segment is not None
        hyp = Hypothesis("", 0.0)
        if closed.keep:
            a8, b8 = closed.start8 - closed.pad_before8, closed.end8 + closed.pad_after8
            hyp = await self._decode(ch, a8, b8, words=True)
        if not hyp.text and not published:  # noise or a blip: nothing to say, nothing to retract
            self._stats["dropped"] += 1
            return
        # an empty final after interims tells clients to clear the interim text
        segment = self._segment(utterance)
        await self._publish(ch, segment, True, closed.endpoint, hyp, closed.start8, closed.end8)
        self._stats["finals"] += 1

    async def _publish(
        self, ch: int, segment: int, final: bool, endpoint: bool, hyp: Hypothesis, a8: int, b8: int
    ) -> None:
        start_s, end_s = a8 / 8000, b8 / 8000
        if hyp.words:
            start_s, end_s = min(start_s, hyp.words[0].start), max(end_s, hyp.words[-1].end)
        await self._on_result(
            TranscriptEvent(
                call_sid=self._call.call_sid,
                segment=segment,
                channel=ch,
                speaker=SPEAKERS[ch],
                is_final=final,
                speech_final=endpoint,
                start=round(start_s, 3),
                end=round(end_s, 3),
                text=hyp.text,
                confidence=hyp.confidence,
                words=hyp.words,
            )
        )
