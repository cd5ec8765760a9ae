"""One owned call: its frames into an ASR session, its results out to Redis, its end in one transaction.

:class:`CallPipeline` is the orchestration: the queue the worker's audio reader fills, stall
detection, the ASR session, what to publish and store of each result, and the end. What keeps
each audio span finalised once is the pure :class:`~services.transcriber.checkpoint.Checkpoint`;
every Redis read and write is :class:`~services.transcriber.call_store.CallStore`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from services.transcriber.call_store import CallStore
from services.transcriber.checkpoint import Checkpoint
from services.transcriber.engine import AsrEngine, AsrSession, CallAudio
from services.transcriber.inbox import CallInbox
from services.transcriber.live import LivePublisher
from services.transcriber.queueing import set_status
from services.transcriber.stall import AudioWatch
from shared import keys
from shared.audio import BYTES_PER_MS
from shared.errors import AsrError
from shared.redisconn import as_text
from shared.retry import REDIS_FAILURES, Backoff
from shared.schema import (
    AudioFrame,
    AudioResumed,
    AudioStopped,
    CallMeta,
    CallStatus,
    ErrorEvent,
    TranscriptEvent,
)
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

PROGRESS_PERSIST_S = 5.0
"""A checkpoint moved only by silence is written once it has advanced this far, s."""

MAX_DELIVERIES = 5
"""A job delivered more often than this (its call crashed every worker that took it) is ended."""


class CallPipeline:
    """Transcribes call ``sid`` for job ``job_id``; the worker's reader feeds :meth:`deliver`.

    ``wake`` is set whenever the call's queue has room again, so the reader adds the call back
    (:class:`~services.transcriber.inbox.CallInbox`).
    ``deliveries``: how often the job was delivered (a job past :data:`MAX_DELIVERIES` is ended).
    """

    def __init__(
        self,
        sid: str,
        job_id: str,
        redis: aioredis.Redis,
        engine: AsrEngine,
        settings: TranscriberSettings,
        wake: asyncio.Event,
        deliveries: int = 1,
        *,
        live: LivePublisher | None = None,
    ) -> None:
        self.sid = sid
        self.store = CallStore(redis, sid, job_id, settings)
        self.live = live or LivePublisher(redis)
        self.deliveries = deliveries
        self.engine = engine
        self.settings = settings
        self.ended = False  # the end transaction ran: the job is acked
        self.ending = False  # the end transaction was started (it may have run)
        self.meta: CallMeta | None = None
        self.checkpoint = Checkpoint(2)
        self.finals = 0
        self._shown: set[int] = set()  # segments whose interims were published
        self.on_published: Callable[[CallPipeline, TranscriptEvent], None] | None = None
        self.failure: str | None = None  # meta ``failure`` at the end: asr_failed, audio_stopped
        watch = AudioWatch(settings.audio_stall_s, settings.audio_idle_s)
        self.inbox = CallInbox(sid, watch, wake, self.store.audio_stalled, self._say, self._heard_s)

    @property
    def job_id(self) -> str:
        """The entry ID of the job we serve the call for (recovery may give it a new one)."""
        return self.store.job_id

    @job_id.setter
    def job_id(self, job_id: str) -> None:
        self.store.job_id = job_id

    @property
    def channels(self) -> int:
        """1 or 2: the call's audio channels (2 until its metadata is read)."""
        return self.checkpoint.channels

    @property
    def sent_ms(self) -> float | None:
        """Call time up to which audio went to the engine, ms (None before the first frame)."""
        return self.checkpoint.sent_ms

    # ------------------------------------------------------------------ reader side

    @property
    def last_id(self) -> str:
        """The last audio entry delivered (the checkpoint's before any): where the reader resumes."""
        return self.inbox.last_id

    @property
    def ready(self) -> bool:
        """The checkpoint is read: the reader may include the call."""
        return self.inbox.open

    def wants_audio(self, count: int) -> bool:
        """True when the call can take ``count`` more frames from the audio stream."""
        return self.inbox.wants(count)

    def deliver(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Queue one audio entry (the reader checked there is room); a bad entry is skipped."""
        self.inbox.deliver(entry_id, fields)

    def _heard_s(self) -> float:
        """Call seconds up to which audio reached the engine."""
        sent_ms = self.checkpoint.sent_ms
        return round(sent_ms / 1000, 3) if sent_ms is not None else 0.0

    def _say(self, event: AudioStopped | AudioResumed) -> None:
        """Publish an audio status event on the call's live channel, and log it once."""
        level = logging.WARNING if isinstance(event, AudioStopped) else logging.INFO
        log.log(
            level, event.type.replace("_", " "), extra={"call_sid": self.sid, "at_s": event.at_s}
        )
        self.live.publish(keys.live(self.sid), event.to_json())

    # ------------------------------------------------------------------ the call

    async def run(self) -> None:
        """Serve the call to its end (or until cancelled: then the job stays pending for another worker)."""
        verdict = await self._prepare()
        if verdict == "drop":
            await self.store.drop_job()
            self.ended = True
            return
        if verdict == "end":
            await self._end(None)
            return
        if self.deliveries > MAX_DELIVERIES:
            log.error(
                "call failed repeatedly; ended",
                extra={"call_sid": self.sid, "deliveries": self.deliveries},
            )
            await self._end(AsrError("call failed on every worker", retryable=False))
            return
        error: AsrError | None = None
        try:
            entry_id, frame = await self.inbox.next()
            if not frame.eof:
                cp = self.checkpoint
                call = CallAudio(self.sid, cp.channels, frame.t_ms, cp.next_segment)
                session = await self.engine.open(call, self._on_result)
                try:
                    await self._stream(session, entry_id, frame)
                    await session.finish(self.settings.final_timeout_s)
                finally:
                    await session.aclose()
        except AsrError as exc:
            error = exc
            log.error(
                "asr failed",
                extra={"call_sid": self.sid, "reason": str(exc), "retryable": exc.retryable},
            )
        await self._end(error)

    async def _stream(self, session: AsrSession, entry_id: str, frame: AudioFrame) -> None:
        per_ms = BYTES_PER_MS * self.channels
        while not frame.eof:
            await session.send(frame.t_ms, frame.pcmu)
            self.checkpoint.sent(entry_id, frame.t_ms + len(frame.pcmu) / per_ms)
            entry_id, frame = await self.inbox.next()

    async def _prepare(self) -> str:
        """Read meta and checkpoint and mark the call ours: ``serve``, ``end`` or ``drop``.

        ``end``: the call has no metadata (its job is retired as a call that ended). ``drop``: the
        call already ended, or another pending job (a duplicate ingest wrote) serves it, so this
        job is only acked and deleted: no second transcription, no second ``end``.
        """
        backoff = Backoff()
        while True:
            try:
                fields = await self.store.meta_fields()
                try:
                    meta = CallMeta.from_redis(fields)
                except ValueError:
                    break
                if meta.status is CallStatus.ENDED or not await self.store.mark_owner():
                    log.info(
                        "job dropped: call ended or served by another job",
                        extra={"call_sid": self.sid, "job": self.job_id},
                    )
                    return "drop"
                if meta.status is CallStatus.QUEUED:
                    await set_status(self.store.redis, [meta], CallStatus.LIVE)
                break
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", call_sid=self.sid)
        try:
            self.meta = CallMeta.from_redis(fields).model_copy(update={"status": CallStatus.LIVE})
        except ValueError:
            log.warning("job for a call without metadata", extra={"call_sid": self.sid})
            return "end"
        channels = 2 if self.meta.channels >= 2 else 1
        try:
            text = {as_text(k): as_text(v) for k, v in fields.items()}
            self.checkpoint = Checkpoint.from_meta(text, channels)
        except ValueError:
            log.warning("bad checkpoint ignored", extra={"call_sid": self.sid})
            self.checkpoint = Checkpoint(channels)
        resume_id = self.checkpoint.resume_id
        if resume_id != "0-0":
            log.info("call resumed", extra={"call_sid": self.sid, "resume_audio_id": resume_id})
        if self.store.hooks:
            await self.store.announce_start()
        self.inbox.start(resume_id)
        return "serve"

    # ------------------------------------------------------------------ results

    async def _on_result(self, event: TranscriptEvent) -> None:
        """Publish an interim; store, then publish, a final; advance through silence."""
        admitted = self.checkpoint.admit(event)
        if admitted is None:
            return  # finalised before (by us or by the worker we took over from)
        event = admitted
        if event.is_final and not event.text and event.segment not in self._shown:
            await self._progress(event)  # silence: nothing to show, but the channel is final
            return
        if not event.is_final:
            self._shown.add(event.segment)
            self.live.publish(keys.live(self.sid), event.to_json())
            self._published(event)
            return
        self._shown.discard(event.segment)
        self.checkpoint.advance(event)
        started_at = self.meta.started_at if self.meta is not None else time.time()
        event.id = await self.store.store_final(event, self.checkpoint.to_meta(), started_at)
        self.checkpoint.saved()
        self.finals += 1
        self.live.publish(keys.live(self.sid), event.to_json())
        self._published(event)

    def _published(self, event: TranscriptEvent) -> None:
        """Tell :attr:`on_published` (the worker's metrics) that ``event`` was queued for
        publishing (the worker's :class:`LivePublisher` writes it within a few ms)."""
        if self.on_published is not None:
            self.on_published(self, event)

    async def _progress(self, event: TranscriptEvent) -> None:
        """An empty final in silence: advance the checkpoint, store and publish nothing.

        Without it a channel that stays silent would hold the checkpoint at the start of the
        call, and a worker taking over would replay everything. The checkpoint is written at
        the next final, or here once it has moved :data:`PROGRESS_PERSIST_S` since the last write.
        """
        self.checkpoint.advance(event)
        if self.checkpoint.unsaved_s() < PROGRESS_PERSIST_S:
            return
        if await self.store.save_progress(self.checkpoint.to_meta()):
            self.checkpoint.saved()

    # ------------------------------------------------------------------ end

    async def _end(self, error: AsrError | None) -> None:
        """Publish end (after an error event when ASR failed), retire the call, ack the job."""
        self.ending = True  # from here the call may be over in Redis: never "queued" again
        if error is not None:
            msg = ErrorEvent(
                code="asr_failed",
                message="transcription failed; the transcript may be incomplete",
                call_sid=self.sid,
            )
            self.live.publish(keys.live(self.sid), msg.to_json())
            self.failure = "asr_failed"
        if self.inbox.idled_out:
            self.failure = self.failure or "audio_stopped"
        await self.live.flush()  # every event of the call is out before its end
        meta = (self.meta or CallMeta(call_sid=self.sid)).model_copy(
            update={"status": CallStatus.ENDED, "ended_at": time.time(), "failure": self.failure}
        )
        await self.store.end(meta, whole=self.meta is not None)
        self.ended = True
        log.info(
            "call ended",
            extra={"call_sid": self.sid, "finals": self.finals, "asr_failed": error is not None},
        )
