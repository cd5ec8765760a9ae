"""One owned call: its frames into an ASR session, its results out to Redis, its end in one transaction.

Checkpoint (fields in ``cs:{p}:<sid>:meta``, written in the same MULTI as each final's XADD):
``resume_audio_id`` (last audio entry fully covered by finals on every channel),
``next_segment`` (first free segment number) and ``final_end_s_<ch>`` (call seconds up to which
channel ``ch`` is finalised). A worker taking the call over reads audio after
``resume_audio_id`` and drops results ending at or before ``final_end_s_<ch>``, so no audio
span gets a second final.

Every transaction here touches one Redis Cluster slot: the call's keys and the partition
structures it writes (job stream, active set, history index, webhook outbox, event channel) share
the call partition's hash tag (:mod:`shared.keys`).

Over 300 lines, not split yet: one call's pipeline; issue 7 splits it into the pure checkpoint/dedup
core, the Redis writes and the orchestration.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from services.transcriber.engine import AsrEngine, AsrSession, CallAudio
from services.transcriber.index import index_end, index_final
from services.transcriber.live import LivePublisher
from services.transcriber.queueing import set_status
from services.transcriber.retention import retire_audio, trim_audio
from services.transcriber.stall import AudioWatch, Stillness
from services.transcriber.webhooks import enqueue
from shared import keys
from shared.audio import BYTES_PER_MS
from shared.cluster import publish, publish_call_event
from shared.errors import AsrError
from shared.redisconn import as_text
from shared.replies import entries
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.schema import (
    AudioFrame,
    AudioResumed,
    AudioStopped,
    CallEnded,
    CallMeta,
    CallStatus,
    EndEvent,
    ErrorEvent,
    TranscriptEvent,
)
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

PROGRESS_PERSIST_S = 5.0
"""A checkpoint moved only by silence is written once it has advanced this far, s."""

QUEUE_FRAMES = 50
"""Frames buffered per call between the audio reader and the ASR session (5 s of 100 ms frames)."""

MAX_DELIVERIES = 5
"""A job delivered more often than this (its call crashed every worker that took it) is ended."""

_EPS_S = 0.002




def _after(event: TranscriptEvent, done_s: float) -> TranscriptEvent | None:
    """``event`` without the words already finalised up to ``done_s`` (None if none is left).

    A result that straddles the channel's last final (a resumed or reconnected session starts
    where *every* channel is finalised, so the channel that was ahead hears some words again)
    keeps only the words whose middle lies after ``done_s``.
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


class CallPipeline:
    """Transcribes call ``sid`` for job ``job_id``; the worker's reader feeds :meth:`deliver`.

    ``wake`` is set whenever the queue has room again, so the reader adds the call back.
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
        self.live = live or LivePublisher(redis)
        self.deliveries = deliveries
        self.job_id = job_id
        self.jobs = keys.jobs(keys.tag_of(sid))  # the stream holding the job
        self.redis = redis
        self.engine = engine
        self.settings = settings
        self.wake = wake
        self.queue: asyncio.Queue[tuple[str, AudioFrame]] = asyncio.Queue(QUEUE_FRAMES)
        self.last_id = "0-0"
        self.ready = False  # checkpoint read: the reader may include the call
        self.eof_read = False
        self.ended = False  # the end transaction ran: the job is acked
        self.ending = False  # the end transaction was started (it may have run)
        self.meta: CallMeta | None = None
        self.channels = 2
        self.final_end_s = [0.0, 0.0]
        self.next_segment = 0
        self.finals = 0
        self._frames: collections.deque[tuple[str, float]] = collections.deque(maxlen=100_000)
        self._resume_id = "0-0"
        self._shown: set[int] = set()  # segments whose interims were published
        self._persisted_s = 0.0  # min(final_end_s) of the last checkpoint written
        self.sent_ms: float | None = None  # call time up to which audio went to the engine
        self.on_published: Callable[[CallPipeline, TranscriptEvent], None] | None = None
        self.failure: str | None = None  # meta ``failure`` at the end: asr_failed, audio_stopped
        self._watch = AudioWatch(settings.audio_stall_s, settings.audio_idle_s)

    # ------------------------------------------------------------------ reader side

    def wants_audio(self, count: int) -> bool:
        """True when the call can take ``count`` more frames from the audio stream."""
        return self.ready and not self.eof_read and QUEUE_FRAMES - self.queue.qsize() >= count

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

    async def _next(self) -> tuple[str, AudioFrame]:
        """The next audio entry; ``audio_stopped`` once the stream has been still for
        ``audio_stall_s`` (``audio_resumed`` when a frame comes after it), a made-up eof once it
        has been still for ``audio_idle_s`` (services/transcriber/stall.py says why)."""
        watch = self._watch
        while True:
            try:
                async with asyncio.timeout(watch.timeout_s()):
                    item = await self.queue.get()
            except TimeoutError:
                if not await self._audio_stalled():
                    watch.alive()
                    continue
                verdict = watch.timed_out()
                if verdict is Stillness.STOPPED:
                    self._say(
                        AudioStopped(
                            call_sid=self.sid,
                            at_s=self._heard_s,
                            idle_s=round(watch.still_for_s(), 3),
                        )
                    )
                if verdict is not Stillness.ENDED:
                    continue
                log.warning(
                    "audio stopped without eof; call ended",
                    extra={"call_sid": self.sid, "idle_s": self.settings.audio_idle_s},
                )
                self.eof_read = True
                self.failure = "audio_stopped"
                return self.last_id, AudioFrame(t_ms=round(self._heard_s * 1000), eof=True)
            if watch.heard():
                self._say(AudioResumed(call_sid=self.sid, at_s=item[1].t_ms / 1000))
            self.wake.set()
            return item

    @property
    def _heard_s(self) -> float:
        """Call seconds up to which audio reached the engine."""
        return round(self._frames[-1][1] / 1000, 3) if self._frames else 0.0

    def _say(self, event: AudioStopped | AudioResumed) -> None:
        """Publish an audio status event on the call's live channel, and log it once."""
        level = logging.WARNING if isinstance(event, AudioStopped) else logging.INFO
        log.log(
            level, event.type.replace("_", " "), extra={"call_sid": self.sid, "at_s": event.at_s}
        )
        self.live.publish(keys.live(self.sid), event.to_json())

    async def _audio_stalled(self) -> bool:
        """True when nothing newer than what we read is in the audio stream (Redis answering)."""
        try:
            last = entries(await cmd(self.redis.xrevrange(keys.audio(self.sid), count=1)))
        except REDIS_FAILURES:
            return False  # cannot tell: keep waiting
        return not last or as_text(last[0][0]) == self.last_id

    # ------------------------------------------------------------------ the call

    async def run(self) -> None:
        """Serve the call to its end (or until cancelled: then the job stays pending for another worker)."""
        verdict = await self._prepare()
        if verdict == "drop":
            await self._drop_job()
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
            entry_id, frame = await self._next()
            if not frame.eof:
                call = CallAudio(self.sid, self.channels, frame.t_ms, self.next_segment)
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
            self._frames.append((entry_id, frame.t_ms + len(frame.pcmu) / per_ms))
            self.sent_ms = self._frames[-1][1]
            entry_id, frame = await self._next()

    async def _prepare(self) -> str:
        """Read meta and checkpoint and mark the call ours: ``serve``, ``end`` or ``drop``.

        ``end``: the call has no metadata (its job is retired as a call that ended). ``drop``: the
        call already ended, or another pending job (a duplicate ingest wrote) serves it, so this
        job is only acked and deleted: no second transcription, no second ``end``.
        """
        backoff = Backoff()
        while True:
            try:
                fields = await cmd(self.redis.hgetall(keys.meta(self.sid)))
                try:
                    meta = CallMeta.from_redis(fields)
                except ValueError:
                    break
                if meta.status is CallStatus.ENDED or not await self._mark_owner():
                    log.info(
                        "job dropped: call ended or served by another job",
                        extra={"call_sid": self.sid, "job": self.job_id},
                    )
                    return "drop"
                if meta.status is CallStatus.QUEUED:
                    await set_status(self.redis, [meta], CallStatus.LIVE)
                break
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", call_sid=self.sid)
        try:
            self.meta = CallMeta.from_redis(fields).model_copy(update={"status": CallStatus.LIVE})
        except ValueError:
            log.warning("job for a call without metadata", extra={"call_sid": self.sid})
            return "end"
        f = {as_text(k): as_text(v) for k, v in fields.items()}
        self.channels = 2 if self.meta.channels >= 2 else 1
        try:
            self._resume_id = self.last_id = f.get("resume_audio_id") or "0-0"
            self.next_segment = int(f.get("next_segment") or 0)
            self.final_end_s = [
                float(f.get(f"final_end_s_{c}") or 0.0) for c in range(self.channels)
            ]
        except ValueError:
            log.warning("bad checkpoint ignored", extra={"call_sid": self.sid})
            self.last_id, self.next_segment = "0-0", 0
            self.final_end_s = [0.0] * self.channels
        self._persisted_s = min(self.final_end_s)
        if self.last_id != "0-0":
            log.info("call resumed", extra={"call_sid": self.sid, "resume_audio_id": self.last_id})
        if self._hooks:  # once per owner; a takeover repeats it with the same idempotency key
            await self._transact(
                lambda pipe: enqueue(pipe, "call_started", self.sid, f"{self.sid}:call_started")
            )
        self.ready = True
        self.wake.set()
        return "serve"

    async def _mark_owner(self) -> bool:
        """Record our job as the call's (meta ``job_id``); False when another pending job has it.

        Ingest may write a second job for a call when a reply is lost; without this, two
        workers would both transcribe the call and every final would be stored twice.
        """
        key = keys.meta(self.sid)
        if await cmd(self.redis.hsetnx(key, "job_id", self.job_id)):
            return True
        held = await cmd(self.redis.hget(key, "job_id"))
        holder = as_text(held or b"")
        if holder == self.job_id:
            return True
        if holder and entries(await cmd(self.redis.xrange(self.jobs, holder, holder, count=1))):
            return False  # that job is pending: its worker (or the next one) serves the call
        await cmd(self.redis.hset(key, "job_id", self.job_id))
        return True

    async def _drop_job(self) -> None:
        """Ack and delete our job without touching the call."""

        def build(pipe: Pipeline) -> None:
            pipe.xack(self.jobs, keys.JOBS_GROUP, self.job_id)
            pipe.xdel(self.jobs, self.job_id)

        await self._transact(build)
        self.ended = True

    async def _transact(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """Run the MULTI that ``build`` queues until it succeeds, backing off through outages.

        Every transaction run this way is safe to repeat (acks, deletes, sets, expiries and
        the end events a client treats idempotently), so a lost EXEC reply is simply retried.
        """
        backoff = Backoff()
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    build(pipe)
                    result: list[Any] = await pipe.execute()
                    return result
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", call_sid=self.sid)

    # ------------------------------------------------------------------ results

    async def _on_result(self, event: TranscriptEvent) -> None:
        ch = event.channel
        if ch >= self.channels or event.end <= self.final_end_s[ch] + _EPS_S:
            return  # finalised before (by us or by the worker we took over from)
        if event.is_final and not event.text and event.segment not in self._shown:
            await self._progress(event)  # silence: nothing to show, but the channel is final
            return
        if event.start < self.final_end_s[ch] - _EPS_S and event.words:
            trimmed = _after(event, self.final_end_s[ch])
            if trimmed is None:
                return
            event = trimmed
        if not event.is_final:
            self._shown.add(event.segment)
            self.live.publish(keys.live(self.sid), event.to_json())
            self._published(event)
            return
        self._shown.discard(event.segment)
        checkpoint = self._advance(ch, event)
        event.id = await self._store_final(event, checkpoint)
        self._persisted_s = min(self.final_end_s)
        self.finals += 1
        self.live.publish(keys.live(self.sid), event.to_json())
        self._published(event)

    @property
    def _started_at(self) -> float:
        return self.meta.started_at if self.meta is not None else time.time()

    @property
    def _hooks(self) -> bool:
        return bool(self.settings.webhook_urls.strip())

    @property
    def _retention_s(self) -> int:
        return self.settings.retention_s

    def _published(self, event: TranscriptEvent) -> None:
        """Tell :attr:`on_published` (the worker's metrics) that ``event`` was queued for
        publishing (the worker's :class:`LivePublisher` writes it within a few ms)."""
        if self.on_published is not None:
            self.on_published(self, event)

    def _advance(self, ch: int, event: TranscriptEvent) -> dict[str, str]:
        """Channel ``ch`` is final up to ``event.end``: move the checkpoint; its meta fields."""
        self.final_end_s[ch] = event.end
        self.next_segment = max(self.next_segment, event.segment + 1)
        covered_ms = min(self.final_end_s) * 1000.0
        while self._frames and self._frames[0][1] <= covered_ms + 0.5:
            self._resume_id = self._frames.popleft()[0]
        return self.checkpoint_fields()

    async def _progress(self, event: TranscriptEvent) -> None:
        """An empty final in silence: advance the checkpoint, store and publish nothing.

        Without it a channel that stays silent would hold the checkpoint at the start of the
        call, and a worker taking over would replay everything. The checkpoint is written at
        the next final, or here once it has moved :data:`PROGRESS_PERSIST_S` since the last write.
        """
        checkpoint = self._advance(event.channel, event)
        if min(self.final_end_s) - self._persisted_s < PROGRESS_PERSIST_S:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(keys.meta(self.sid), mapping=checkpoint)  # type: ignore[arg-type]
                resume_id = checkpoint["resume_audio_id"]
                trim_audio(pipe, self.sid, resume_id, self.settings.audio_replay_s)
                await cmd(pipe.execute())
            self._persisted_s = min(self.final_end_s)
        except REDIS_FAILURES:
            log.debug("checkpoint not written", extra={"call_sid": self.sid})

    async def _store_final(self, event: TranscriptEvent, checkpoint: dict[str, str]) -> str:
        """XADD the final and HSET the checkpoint in one transaction; the entry ID."""
        backoff = Backoff()
        history = event.to_history()
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(
                        keys.transcript(self.sid),
                        history,  # type: ignore[arg-type]  # redis-py's Dict[FieldT, …] is invariant
                        maxlen=self.settings.transcript_maxlen,
                        approximate=True,
                    )
                    pipe.hset(keys.meta(self.sid), mapping=checkpoint)  # type: ignore[arg-type]  # as above
                    resume_id = checkpoint["resume_audio_id"]
                    trim_audio(pipe, self.sid, resume_id, self.settings.audio_replay_s)
                    index_final(pipe, self.sid, self._started_at, event.text, self._retention_s)
                    if self._hooks and self.settings.webhook_finals:
                        key = f"{self.sid}:final:{event.segment}"
                        enqueue(pipe, "final", self.sid, key, event.model_dump_json())
                    result = await pipe.execute()
                return as_text(result[0])
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", call_sid=self.sid)
                stored = await self._stored_id(event)
                if stored is not None:
                    return stored

    async def _stored_id(self, event: TranscriptEvent) -> str | None:
        """After a failed EXEC: the final's entry ID if the transaction did apply, else None."""
        try:
            done = await cmd(self.redis.hget(keys.meta(self.sid), f"final_end_s_{event.channel}"))
            if done is None or float(done) + _EPS_S < event.end:
                return None
            last = entries(await cmd(self.redis.xrevrange(keys.transcript(self.sid), count=1)))
            return as_text(last[0][0]) if last else None
        except REDIS_FAILURES:
            return None

    def checkpoint_fields(self) -> dict[str, str]:
        """The checkpoint's meta fields: ``resume_audio_id``, ``next_segment``,
        ``final_end_s_<ch>`` (also what services/transcriber/recovery.py writes back)."""
        return {
            "resume_audio_id": self._resume_id,
            "next_segment": str(self.next_segment),
            **{f"final_end_s_{c}": f"{e:.3f}" for c, e in enumerate(self.final_end_s)},
        }

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
        await self.live.flush()  # every event of the call is out before its end
        now = time.time()
        if error is not None:
            self.failure = "asr_failed"
        meta = (self.meta or CallMeta(call_sid=self.sid)).model_copy(
            update={"status": CallStatus.ENDED, "ended_at": now, "failure": self.failure}
        )
        ended_fields = {"status": "ended", "ended_at": f"{now:.3f}"}
        if self.failure is not None:
            ended_fields["failure"] = self.failure
        if self.meta is not None:  # the whole record: Redis may have lost it (recovery.py)
            ended_fields = meta.to_redis()
        end_json = EndEvent(call_sid=self.sid).to_json()
        ended_json = CallEnded(call=meta).to_json()

        def build(pipe: Pipeline) -> None:
            publish(pipe, keys.live(self.sid), end_json)
            pipe.srem(keys.active(keys.tag_of(self.sid)), self.sid)
            pipe.hset(keys.meta(self.sid), mapping=ended_fields)  # type: ignore[arg-type]
            publish_call_event(pipe, self.sid, ended_json)
            index_end(pipe, self.sid, meta.started_at, now, self.settings.retention_s)
            if self._hooks:
                enqueue(pipe, "call_ended", self.sid, f"{self.sid}:call_ended")
            pipe.xack(self.jobs, keys.JOBS_GROUP, self.job_id)
            pipe.xdel(self.jobs, self.job_id)
            for key in keys.call_keys(self.sid):
                pipe.expire(key, self.settings.retention_s)
            retire_audio(pipe, self.sid, self.settings.audio_replay_s)

        await self._transact(build)
        self.ended = True
        log.info(
            "call ended",
            extra={"call_sid": self.sid, "finals": self.finals, "asr_failed": error is not None},
        )
