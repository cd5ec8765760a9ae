"""The Redis side of one owned call: every read and write :mod:`services.transcriber.call` makes.

Every transaction here touches one Redis Cluster slot: the call's keys and the partition
structures it writes (job stream, active set, history index, webhook outbox, event channel) share
the call partition's hash tag (:mod:`shared.keys`). Writes that must happen are retried with
backoff through Redis outages, and each is safe to repeat, so a lost EXEC reply is simply retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from services.transcriber.checkpoint import EPS_S
from services.transcriber.index import index_end, index_final
from services.transcriber.retention import retire_audio, trim_audio
from services.transcriber.webhooks import enqueue
from shared import keys
from shared.cluster import publish, publish_call_event
from shared.redisconn import as_text
from shared.replies import entries
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.schema import CallEnded, CallMeta, EndEvent, TranscriptEvent
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)


class CallStore:
    """Reads and writes of call ``sid``, served for job ``job_id`` of its partition's job stream."""

    def __init__(
        self, redis: aioredis.Redis, sid: str, job_id: str, settings: TranscriberSettings
    ) -> None:
        self.redis = redis
        self.sid = sid
        self.job_id = job_id
        self.jobs = keys.jobs(keys.tag_of(sid))  # the stream holding the job
        self.settings = settings

    @property
    def hooks(self) -> bool:
        """True when webhooks are configured (``webhook_urls``)."""
        return bool(self.settings.webhook_urls.strip())

    async def transact(self, build: Callable[[Pipeline], None]) -> list[Any]:
        """Run the MULTI that ``build`` queues until it succeeds, backing off through outages;
        its replies. Only for transactions that are safe to repeat."""
        backoff = Backoff()
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    build(pipe)
                    result: list[Any] = await pipe.execute()
                    return result
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", call_sid=self.sid)

    async def meta_fields(self) -> dict[bytes | str, bytes | str]:
        """The call's meta hash as stored (empty when it has none); ``RedisError`` and
        ``OSError`` pass to the caller."""
        return await cmd(self.redis.hgetall(keys.meta(self.sid)))

    async def mark_owner(self) -> bool:
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

    async def drop_job(self) -> None:
        """Ack and delete our job without touching the call."""

        def build(pipe: Pipeline) -> None:
            pipe.xack(self.jobs, keys.JOBS_GROUP, self.job_id)
            pipe.xdel(self.jobs, self.job_id)

        await self.transact(build)

    async def announce_start(self) -> None:
        """Queue the ``call_started`` webhook (once per owner; a takeover repeats it with the
        same idempotency key, so receivers see it once)."""
        await self.transact(
            lambda pipe: enqueue(pipe, "call_started", self.sid, f"{self.sid}:call_started")
        )

    async def audio_stalled(self, last_id: str) -> bool:
        """True when nothing newer than ``last_id`` is in the audio stream (Redis answering);
        False when Redis cannot tell."""
        try:
            last = entries(await cmd(self.redis.xrevrange(keys.audio(self.sid), count=1)))
        except REDIS_FAILURES:
            return False
        return not last or as_text(last[0][0]) == last_id

    def _checkpoint(self, pipe: Pipeline, checkpoint: dict[str, str]) -> None:
        pipe.hset(keys.meta(self.sid), mapping=checkpoint)  # type: ignore[arg-type]  # redis-py's Dict[FieldT, …] is invariant
        trim_audio(pipe, self.sid, checkpoint["resume_audio_id"], self.settings.audio_replay_s)

    async def save_progress(self, checkpoint: dict[str, str]) -> bool:
        """Write the checkpoint's meta fields and trim the audio behind it, once; False when
        Redis failed (the next final writes it anyway)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._checkpoint(pipe, checkpoint)
                await cmd(pipe.execute())
            return True
        except REDIS_FAILURES:
            log.debug("checkpoint not written", extra={"call_sid": self.sid})
            return False

    async def store_final(
        self, event: TranscriptEvent, checkpoint: dict[str, str], started_at: float
    ) -> str:
        """In one transaction: XADD the final to the transcript, write the checkpoint, trim the
        audio behind it, index the words for search, and queue the ``final`` webhook; retried
        until it applied. Returns the final's transcript entry ID.

        ``started_at``: the call's start (Unix time, s), the history index's score.
        """
        backoff = Backoff()
        history = event.to_history()
        settings = self.settings
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(
                        keys.transcript(self.sid),
                        history,  # type: ignore[arg-type]  # as in _checkpoint
                        maxlen=settings.transcript_maxlen,
                        approximate=True,
                    )
                    self._checkpoint(pipe, checkpoint)
                    index_final(pipe, self.sid, started_at, event.text, settings.retention_s)
                    if self.hooks and settings.webhook_finals:
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
            if done is None or float(done) + EPS_S < event.end:
                return None
            last = entries(await cmd(self.redis.xrevrange(keys.transcript(self.sid), count=1)))
            return as_text(last[0][0]) if last else None
        except REDIS_FAILURES:
            return None

    async def end(self, meta: CallMeta, *, whole: bool) -> None:
        """The end of the call, in one transaction retried until it applied.

        Publishes ``end`` on the live channel and ``call_ended`` on the call events channel,
        writes ``meta`` (the whole record when ``whole``: Redis may have lost it, see
        services/transcriber/recovery.py; else only status, ended_at and failure), removes the
        call from its partition's active set, indexes its end, queues the ``call_ended``
        webhook, acks and deletes the job, sets every key of the call to expire after
        ``retention_s`` and retires its audio.
        """
        settings = self.settings
        ended_at = meta.ended_at if meta.ended_at is not None else 0.0
        fields = {"status": "ended", "ended_at": f"{ended_at:.3f}"}
        if meta.failure is not None:
            fields["failure"] = meta.failure
        if whole:
            fields = meta.to_redis()
        end_json = EndEvent(call_sid=self.sid).to_json()
        ended_json = CallEnded(call=meta).to_json()

        def build(pipe: Pipeline) -> None:
            publish(pipe, keys.live(self.sid), end_json)
            pipe.srem(keys.active(keys.tag_of(self.sid)), self.sid)
            pipe.hset(keys.meta(self.sid), mapping=fields)  # type: ignore[arg-type]  # as in _checkpoint
            publish_call_event(pipe, self.sid, ended_json)
            index_end(pipe, self.sid, meta.started_at, ended_at, settings.retention_s)
            if self.hooks:
                enqueue(pipe, "call_ended", self.sid, f"{self.sid}:call_ended")
            pipe.xack(self.jobs, keys.JOBS_GROUP, self.job_id)
            pipe.xdel(self.jobs, self.job_id)
            for key in keys.call_keys(self.sid):
                pipe.expire(key, settings.retention_s)
            retire_audio(pipe, self.sid, settings.audio_replay_s)

        await self.transact(build)
