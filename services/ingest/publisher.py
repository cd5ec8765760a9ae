"""The one buffered Redis writer of an ingest process.

Twilio discards audio when our socket reads slowly (error 31930), so the WebSocket read loops
never await Redis: they call the non-blocking ``submit_*`` methods, which append to one FIFO
buffer shared by all calls; :meth:`Publisher.run` writes it out in pipelines. The buffer holds
at most ``buffer_frames`` audio frames, and once it is half full no call may hold more than its
fair share of it (:class:`shared.limits.FairShare`: one call's flood cannot push out another's
frames); past that, new audio frames are dropped, counted per call and logged once per call
per burst. Control entries (a call's start and its eof) are never
dropped. While Redis is down the buffer keeps filling (bounded) and the writer retries with
backoff and jitter; one FIFO keeps every call's entries in order.

What one call writes (docs/protocol.md, "Redis keys" and "The life of a call in Redis"):

* start: ``HSET cs:{p}:<sid>:meta`` (:meth:`CallMeta.to_redis`), ``SADD cs:{p}:calls:active``,
  ``XADD cs:{p}:jobs call_sid``, ``PUBLISH cs:calls:events`` (:class:`CallStarted` JSON; on a
  cluster ``SPUBLISH cs:{p}:events``), in one MULTI of its own: every key carries the call
  partition's hash tag ``{p}`` (:mod:`shared.keys`), so on a Redis Cluster it is one slot. Every attempt first reads the meta hash: when it already holds this start's
  ``stream_sid`` and ``started_at``, an earlier attempt was applied and only its reply was lost,
  so nothing is written again (a second job would give the call a second owner);
* each frame: ``XADD cs:{p}:<sid>:audio MAXLEN ~ audio_maxlen`` with the explicit ID ``<t_ms>-1``,
  so a batch retried after a lost reply cannot write a frame twice (Redis refuses an ID that is
  not above the stream's last; that refusal counts as written);
* eof: the entry ``{t: end_ms, eof: 1}`` (ID ``<end_ms>-1``) and ``EXPIRE`` of the audio stream
  after ``retention_s``;
* while a call streams, ``EXPIRE cs:{p}:<sid>:audio`` :data:`LIVE_AUDIO_TTL_S` with its first frame
  and again every :data:`LIVE_AUDIO_TTL_REFRESH_S`: a stream whose call lost its other keys (a
  Redis restarted without persistence) or whose ingest died still expires.

Over 300 lines on purpose: one buffered writer: its submit side and its write side share the
buffer and its per-call accounting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from shared import keys
from shared.cluster import publish_call_event, ready
from shared.limits import FairShare
from shared.retry import REDIS_FAILURES, Backoff
from shared.schema import AudioFrame, CallMeta, CallStarted

log = logging.getLogger(__name__)

LIVE_AUDIO_TTL_S = 3600
"""TTL of a call's audio stream while ingest writes it, s (refreshed; the eof sets retention_s)."""

LIVE_AUDIO_TTL_REFRESH_S = 60.0
"""How often a streaming call's audio TTL is set again, s: one EXPIRE a minute per call."""

_START, _FRAME, _EOF = 0, 1, 2
_Entry = tuple[int, str, Any]


class Publisher:
    """Buffers a process's Redis writes and writes them in order, in pipelines.

    Args:
        redis: a client from :func:`shared.redisconn.connect` (one per process).
        buffer_frames: audio frames held at most across calls before new ones are dropped.
        audio_maxlen: approximate MAXLEN of each call's audio stream (entries).
        retention_s: TTL set on a call's audio stream once its eof is written, s.
        write_timeout_s: the longest one pipeline may take before it counts as failed, s.
        batch_max: entries per pipeline at most.
        linger_s: once woken by a first entry, how long the writer waits for more before it
            writes, s. One pipeline per ~10 ms instead of one per frame: at 100 calls ingest
            produces 1,000 frames a second, and with a pipeline per frame an eighth of ingest's
            CPU went to pipelines (py-spy under benchmarks/load.py). Adds at most this much
            latency.
        backoff_initial_s, backoff_max_s: retry delays after a failed write (doubling, with
            jitter down to half), s.

    Attributes:
        dropped_frames: audio frames dropped since start (buffer full), all calls.
        written_frames: audio frames written.
        failed_writes: pipelines that failed (and were retried) since start.
        redis_ok: False from a failed write until the next write succeeds.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        buffer_frames: int,
        audio_maxlen: int,
        retention_s: int,
        write_timeout_s: float = 5.0,
        batch_max: int = 256,
        linger_s: float = 0.01,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._buffer_frames = buffer_frames
        self._audio_maxlen = audio_maxlen
        self._retention_s = retention_s
        self._write_timeout_s = write_timeout_s
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._buf: deque[_Entry] = deque()
        self._audio_pending = 0
        self._share = FairShare(buffer_frames)
        self._wake = asyncio.Event()
        self._closing = False
        self._dropped_by_call: dict[str, int] = {}
        self._burst: dict[str, int] = {}  # calls now dropping -> frames dropped in this burst
        self._ttl_at: dict[str, float] = {}  # call -> monotonic time of its last audio EXPIRE
        self.dropped_frames = 0
        self.written_frames = 0
        self.failed_writes = 0
        self.redis_ok = True

    # ------------------------------------------------------------------ submit (never awaits)

    @property
    def pending(self) -> int:
        """Entries waiting to be written (frames and control entries)."""
        return len(self._buf)

    @property
    def buffered_frames(self) -> int:
        """Audio frames waiting to be written (at most ``buffer_frames``)."""
        return self._audio_pending

    def submit_start(self, meta: CallMeta) -> None:
        """Queue a call's start (meta, active set, job, call_started). Never dropped."""
        self._push((_START, meta.call_sid, meta))

    def submit_frame(self, call_sid: str, frame: AudioFrame) -> bool:
        """Queue one mixed frame; returns False when the buffer is full (or the call holds its
        fair share of a half-full one) and it was dropped."""
        if not self._share.admit(call_sid):
            self.dropped_frames += 1
            self._dropped_by_call[call_sid] = self._dropped_by_call.get(call_sid, 0) + 1
            if call_sid not in self._burst:
                self._burst[call_sid] = 0
                log.warning(
                    "write buffer full, dropping audio",
                    extra={"call_sid": call_sid, "buffered_frames": self._audio_pending},
                )
            self._burst[call_sid] += 1
            return False
        if call_sid in self._burst:
            self._end_burst(call_sid)
        self._audio_pending += 1
        self._push((_FRAME, call_sid, frame))
        return True

    def submit_eof(self, call_sid: str, end_ms: int) -> int:
        """Queue a call's eof (after all its frames); returns the frames dropped for this call."""
        if call_sid in self._burst:
            self._end_burst(call_sid)
        self._push((_EOF, call_sid, end_ms))
        return self._dropped_by_call.pop(call_sid, 0)

    def dropped_for(self, call_sid: str) -> int:
        """Audio frames dropped so far for a call that has not ended yet."""
        return self._dropped_by_call.get(call_sid, 0)

    def close(self) -> None:
        """Let :meth:`run` return once the buffer is empty. Idempotent."""
        self._closing = True
        self._wake.set()

    def _push(self, entry: _Entry) -> None:
        self._buf.append(entry)
        self._wake.set()

    def _end_burst(self, call_sid: str) -> None:
        n = self._burst.pop(call_sid)
        log.warning(
            "write buffer has room again",
            extra={"call_sid": call_sid, "dropped_frames": n},
        )

    # ------------------------------------------------------------------ the writer

    async def ping(self, timeout_s: float = 1.0) -> bool:
        """True when Redis answers PING within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    async def run(self) -> None:
        """Write the buffer until :meth:`close` was called and it is empty; never raises on
        Redis failures (it retries), only on cancellation."""
        await ready(self._redis)  # a cluster's slot map, before the first pipeline
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s)
        failing_since: float | None = None
        retries = 0
        while True:
            if not self._buf:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                if self._linger_s > 0 and not self._closing:
                    await asyncio.sleep(self._linger_s)  # let more frames join this pipeline
                continue
            try:
                written = await self._write_batch()
            except REDIS_FAILURES as exc:
                self.redis_ok = False
                self.failed_writes += 1
                retries += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "redis write failed, buffering",
                        extra={"error": exc.__class__.__name__, "pending": len(self._buf)},
                    )
                await backoff.wait()
                continue
            if failing_since is not None:
                log.warning(
                    "redis reconnected",
                    extra={
                        "outage_s": round(time.monotonic() - failing_since, 3),
                        "retries": retries,
                        "pending": len(self._buf),
                        "dropped_frames": self.dropped_frames,
                    },
                )
                failing_since, retries = None, 0
            self.redis_ok = True
            backoff.reset()
            for _ in range(written):
                kind, sid, _obj = self._buf.popleft()
                if kind == _FRAME:
                    self._share.release(sid)
                    self._audio_pending -= 1
                    self.written_frames += 1

    async def _write_batch(self) -> int:
        """Write the oldest entries in one pipeline; return how many were written.

        A call's start is written alone (:meth:`_write_start`); a batch of frames and eofs
        stops before the next start.

        Raises:
            RedisError, OSError, TimeoutError: the write failed; nothing is removed.
        """
        kind, sid, obj = self._buf[0]
        if kind == _START:
            async with asyncio.timeout(self._write_timeout_s):
                results = await self._write_start(obj)
            self._log_refused(results)
            return 1
        batch = list(
            itertools.takewhile(
                lambda e: e[0] != _START, itertools.islice(self._buf, self._batch_max)
            )
        )
        pipe = self._redis.pipeline(transaction=False)
        now = time.monotonic()
        refreshed: list[str] = []
        for kind, sid, obj in batch:
            if kind == _FRAME:
                self._xadd_audio(pipe, sid, obj)
                if (
                    now - self._ttl_at.get(sid, -LIVE_AUDIO_TTL_REFRESH_S)
                    >= LIVE_AUDIO_TTL_REFRESH_S
                ):
                    pipe.expire(keys.audio(sid), LIVE_AUDIO_TTL_S)
                    self._ttl_at[sid] = now
                    refreshed.append(sid)
            else:
                self._xadd_audio(pipe, sid, AudioFrame(t_ms=obj, eof=True))
                pipe.expire(keys.audio(sid), self._retention_s)
        try:
            async with asyncio.timeout(self._write_timeout_s):
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            for sid in refreshed:  # not written: set it with the retried batch
                self._ttl_at.pop(sid, None)
            raise
        finally:
            await pipe.reset()
        for kind, sid, _obj in batch:
            if kind == _EOF:
                self._ttl_at.pop(sid, None)
        self._log_refused(results)
        return len(batch)

    async def _write_start(self, meta: CallMeta) -> list[Any]:
        """Write a call's start in one MULTI unless an earlier attempt already did.

        Returns the replies (``[]`` when it was already written).
        """
        key = keys.meta(meta.call_sid)
        fields = meta.to_redis()
        written = await self._redis.hmget(key, ["stream_sid", "started_at"])
        if [v.decode() if isinstance(v, bytes) else v for v in written] == [
            fields["stream_sid"],
            fields["started_at"],
        ]:
            return []  # applied before; only its reply was lost
        async with self._redis.pipeline(transaction=True) as pipe:
            tag = keys.tag_of(meta.call_sid)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's Mapping[FieldT, …] is invariant
            pipe.sadd(keys.active(tag), meta.call_sid)
            pipe.xadd(keys.jobs(tag), {"call_sid": meta.call_sid})
            publish_call_event(pipe, meta.call_sid, CallStarted(call=meta).to_json())
            return list(await pipe.execute(raise_on_error=False))

    def _log_refused(self, results: list[Any]) -> None:
        """Log the replies Redis refused for good (not the refusal of a frame written before)."""
        refused = [
            r for r in results if isinstance(r, ResponseError) and "equal or smaller" not in str(r)
        ]
        if refused:  # not retryable (e.g. WRONGTYPE): report once per batch and move on
            log.error(
                "redis refused writes",
                extra={"count": len(refused), "error": str(refused[0])[:200]},
            )

    def _xadd_audio(self, pipe: Any, call_sid: str, frame: AudioFrame) -> None:
        pipe.xadd(
            keys.audio(call_sid),
            frame.to_redis(),
            id=f"{frame.t_ms}-1",
            maxlen=self._audio_maxlen,
            approximate=True,
        )
