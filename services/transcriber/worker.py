"""The transcriber worker: claims calls from ``cs:jobs``, reads all their audio with one XREAD.

Three loops under one TaskGroup, plus one task per owned call:

* *claim*: XAUTOCLAIM jobs idle longer than ``claim_idle_ms`` (a dead worker's calls), then
  XREADGROUP ``>`` for as many new jobs as there is free capacity (``max_calls``), BLOCK
  ``read_block_ms`` (https://redis.io/docs/latest/commands/xautoclaim/, /xreadgroup/).
* *lease*: every ``lease_renew_s``, XCLAIM (min idle half a period, JUSTID) the jobs still
  pending under our name, so live calls never look idle; a job that another worker took is abandoned here. It also
  refreshes the health key ``cs:worker:<consumer>`` (``{"calls", "ts", "asr_ok"}``, TTL 3 leases).
* *audio*: one XREAD BLOCK over every owned call's audio stream from its last ID; a call whose
  queue is full is left out of the round until it drains, so backpressure stays in Redis.

Redis failures never end the worker: each loop backs off with jitter and resumes.

Over 300 lines, not split yet: the worker's three loops share its call registry; issue 7 moves
claiming and lease renewal to their own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import KeyT, StreamIdT

from services.transcriber.call import CallPipeline
from services.transcriber.engine import AsrEngine
from services.transcriber.live import LivePublisher
from services.transcriber.metrics import TranscriberMetrics
from services.transcriber.queueing import Saturation, set_status
from services.transcriber.recovery import audit, restore
from shared import keys
from shared.redisconn import as_text
from shared.replies import batches, pending_ids
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.schema import CallStatus
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

READ_COUNT = 10
"""Audio entries one XREAD round takes per call at most (1 s of 100 ms frames)."""

ROUND_MIN_S = 0.02
"""Shortest time between the starts of two audio XREAD rounds, s. Without it a worker serving
many calls reads as soon as any one frame lands, one round trip per frame (1,000 a second at 100
calls, a sixth of the worker's CPU under benchmarks/load.py); with it one round serves every
call's frames of the last 20 ms, at the cost of at most 20 ms of latency."""


def health_ttl_ms(settings: TranscriberSettings) -> int:
    """TTL of the health key: three lease periods, at least one second."""
    return max(1000, int(settings.lease_renew_s * 3000))




class Worker:
    """One consumer in the ``transcribers`` group; :meth:`run` serves until ``stop`` is set."""

    def __init__(
        self, settings: TranscriberSettings, redis: aioredis.Redis, engine: AsrEngine
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.engine = engine
        self.consumer = settings.consumer
        self.live = LivePublisher(redis)
        self.calls: dict[str, CallPipeline] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake_reader = asyncio.Event()
        self._capacity = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self.served = 0
        self.heartbeat_at: float | None = None  # monotonic time of the last health key write
        self.redis_ok = True  # False from a failed lease round until the next one succeeds
        self.health: dict[str, bool] = {"asr_ok": True}  # the start-up probe's verdict (probe.py)
        self.saturation = Saturation(self.consumer, settings.max_calls)
        self.metrics = TranscriberMetrics(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and serve calls until ``stop``, then hand the unfinished ones over.

        A graceful stop marks our unfinished jobs as idle for ``claim_idle_ms`` already
        (XCLAIM … IDLE), so another worker's next XAUTOCLAIM takes them at once and resumes from
        their checkpoints; a worker that dies without this is taken over after ``claim_idle_ms``.
        """
        log.info(
            "worker started",
            extra={"consumer": self.consumer, "max_calls": self.settings.max_calls},
        )
        serving: list[CallPipeline] = []
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                loops = [
                    tg.create_task(self._claim_loop(), name="claim"),
                    tg.create_task(self._lease_loop(), name="lease"),
                    tg.create_task(self._audio_loop(), name="audio"),
                ]
                live = tg.create_task(self.live.run(), name="live")
                await stop.wait()
                serving = list(self.calls.values())
                for task in [*loops, *self._tasks.values()]:
                    task.cancel()
                with contextlib.suppress(TimeoutError):  # what the calls published goes out
                    async with asyncio.timeout(1.0):
                        await self.live.flush()
                live.cancel()
        finally:
            unfinished = [c for c in serving if not c.ended]
            handed_over = len(unfinished)
            await self._hand_over(unfinished)
            with contextlib.suppress(*REDIS_FAILURES):
                async with asyncio.timeout(1.0):
                    await cmd(self.redis.delete(keys.worker(self.consumer)))
            log.info(
                "worker stopped",
                extra={
                    "consumer": self.consumer,
                    "served": self.served,
                    "handed_over": handed_over,
                },
            )

    async def _hand_over(self, calls: list[CallPipeline]) -> None:
        """Show our unfinished calls as ``queued`` and make their jobs claimable by another
        worker now (best effort, 1 s)."""
        if not calls:
            return
        job_ids = [c.job_id for c in calls]
        try:
            async with asyncio.timeout(1.0):
                # before the jobs can be claimed, so a new owner's "live" cannot come first
                live = [
                    c.meta for c in calls if c.meta and c.meta.status is CallStatus.LIVE and not c.ending
                ]
                with contextlib.suppress(*REDIS_FAILURES):  # the hand-over matters more
                    await set_status(self.redis, live, CallStatus.QUEUED)
                await cmd(
                    self.redis.xclaim(
                        keys.JOBS,
                        keys.JOBS_GROUP,
                        self.consumer,
                        min_idle_time=0,
                        message_ids=[*job_ids],
                        idle=self.settings.claim_idle_ms,
                        justid=True,
                    )
                )
        except REDIS_FAILURES as exc:  # TimeoutError is an OSError, so among them
            log.warning(
                "hand-over failed: calls wait for claim_idle_ms",
                extra={"consumer": self.consumer, "error": exc.__class__.__name__},
            )
            return
        log.info("calls handed over", extra={"consumer": self.consumer, "calls": len(job_ids)})

    # ------------------------------------------------------------------ claiming

    async def _ensure_group(self) -> None:
        try:
            await cmd(self.redis.xgroup_create(keys.JOBS, keys.JOBS_GROUP, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _free(self) -> int:
        return self.settings.max_calls - len(self._tasks)

    async def _claim_loop(self) -> None:
        backoff = Backoff()
        group_ready = False
        block_ms = self.settings.read_block_ms
        cursor = "0-0"  # XAUTOCLAIM scans at most 10 x COUNT entries a call: walk the whole PEL
        while True:
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                if self._free() <= 0:
                    await self.saturation.full(self.redis)
                    self._capacity.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(block_ms / 1000):
                            await self._capacity.wait()
                    continue
                cursor_next, claimed, *_ = await cmd(
                    self.redis.xautoclaim(
                        keys.JOBS,
                        keys.JOBS_GROUP,
                        self.consumer,
                        min_idle_time=self.settings.claim_idle_ms,
                        start_id=cursor,
                        count=self._free(),
                    )
                )
                cursor = as_text(cursor_next)
                for job_id, fields in claimed:
                    await self._take(job_id, fields, reclaimed=True)
                if (free := self._free()) > 0:
                    resp = batches(
                        await cmd(
                            self.redis.xreadgroup(
                                keys.JOBS_GROUP,
                                self.consumer,
                                {keys.JOBS: ">"},
                                count=free,
                                block=block_ms,
                            )
                        )
                    )
                    if sum(len(entries) for _, entries in resp) < free:
                        self.saturation.drained()
                    for _stream, entries in resp:
                        for job_id, fields in entries:
                            await self._take(job_id, fields, reclaimed=False)
                backoff.reset()
            except REDIS_FAILURES as exc:
                if isinstance(exc, ResponseError) and (
                    "NOGROUP" in str(exc) or "no such key" in str(exc)
                ):
                    group_ready = False
                    cursor = "0-0"
                await backoff.retry_after(exc, log, "redis unavailable", loop="claim")

    async def _take(
        self, job_id: bytes, fields: dict[bytes, bytes] | None, *, reclaimed: bool
    ) -> None:
        """Start serving the call of one job (or drop a job that names no call)."""
        jid = as_text(job_id)
        sid = as_text(fields.get(b"call_sid", b"")) if fields else ""
        if sid in self.calls and self.calls[sid].job_id == jid:
            return  # already ours
        if not sid or sid in self.calls:
            log.warning("bad or duplicate job dropped", extra={"call_sid": sid or "-", "job": jid})
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(keys.JOBS, keys.JOBS_GROUP, jid)
                pipe.xdel(keys.JOBS, jid)
                await pipe.execute()
            return
        assert self._tg is not None
        deliveries = 1
        if reclaimed:
            info = await cmd(
                self.redis.xpending_range(keys.JOBS, keys.JOBS_GROUP, min=jid, max=jid, count=1)
            )
            deliveries = int(info[0]["times_delivered"]) if info else 1
        call = CallPipeline(
            sid,
            jid,
            self.redis,
            self.engine,
            self.settings,
            self._wake_reader,
            deliveries,
            live=self.live,
        )
        call.on_published = self.metrics.published
        serve = self._serve(call)
        try:
            task = self._tg.create_task(serve, name=f"call-{sid}")
        except RuntimeError:  # shutting down: the job stays pending for another worker
            serve.close()
            return
        self.calls[sid] = call
        self._tasks[sid] = task
        log.info(
            "call claimed",
            extra={"call_sid": sid, "consumer": self.consumer, "taken_over": reclaimed},
        )

    async def _serve(self, call: CallPipeline) -> None:
        try:
            await call.run()
            self.served += 1
        except Exception:
            # the job stays pending: another worker (or we) will claim it after claim_idle_ms
            log.exception("call failed", extra={"call_sid": call.sid})
        finally:
            if self.calls.get(call.sid) is call:
                del self.calls[call.sid]
                self._tasks.pop(call.sid, None)
            self._capacity.set()

    # ------------------------------------------------------------------ lease and health

    async def _lease_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._renew()
                await cmd(
                    self.redis.set(
                        keys.worker(self.consumer),
                        json.dumps(
                            {"calls": len(self.calls), "ts": round(time.time(), 3), **self.health}
                        ),
                        px=health_ttl_ms(self.settings),
                    )
                )
                self.heartbeat_at = time.monotonic()
                self.redis_ok = True
                backoff.reset()
                await asyncio.sleep(self.settings.lease_renew_s)
            except REDIS_FAILURES as exc:
                self.redis_ok = False
                await backoff.retry_after(exc, log, "redis unavailable", loop="lease")

    async def _renew(self) -> None:
        """Re-claim our pending jobs; abandon the calls whose job another worker took."""
        owned = {c.job_id: c for c in self.calls.values() if not c.ended}
        if not owned:
            return
        pending = await cmd(
            self.redis.xpending_range(
                keys.JOBS,
                keys.JOBS_GROUP,
                min="-",
                max="+",
                count=2 * self.settings.max_calls + 10,
                consumername=self.consumer,
            )
        )
        mine = {as_text(jid) for jid in pending_ids(pending)}
        keep = [jid for jid in owned if jid in mine]
        if keep:
            await cmd(
                self.redis.xclaim(
                    keys.JOBS,
                    keys.JOBS_GROUP,
                    self.consumer,
                    # not 0: a job another worker claimed since our XPENDING has idle ~0, and
                    # re-claiming it would make both serve the call; ours idle ~lease_renew_s
                    min_idle_time=int(self.settings.lease_renew_s * 500),
                    message_ids=[*keep],
                    justid=True,
                )
            )
        taken, vanished = await audit(self.redis, owned, mine)
        for call in taken:
            log.warning(
                "call lost to another worker", extra={"call_sid": call.sid, "job": call.job_id}
            )
            task = self._tasks.get(call.sid)
            if task is not None:
                task.cancel()
        for call in vanished:  # Redis lost them (restarted without persistence): rebuild
            await restore(self.redis, call, self.consumer)

    # ------------------------------------------------------------------ audio

    async def _audio_loop(self) -> None:
        backoff = Backoff()
        block_ms = self.settings.read_block_ms
        loop = asyncio.get_running_loop()
        while True:
            streams: dict[KeyT, StreamIdT] = {
                keys.audio(sid): c.last_id
                for sid, c in self.calls.items()
                if c.wants_audio(READ_COUNT)
            }
            if not streams:
                self._wake_reader.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(block_ms / 1000):
                        await self._wake_reader.wait()
                continue
            started = loop.time()
            try:
                resp = batches(
                    await cmd(self.redis.xread(streams, count=READ_COUNT, block=block_ms))
                )
                backoff.reset()
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", loop="audio")
                continue
            for stream, entries in resp:
                sid = as_text(stream).split("{", 1)[1].split("}", 1)[0]
                call = self.calls.get(sid)
                if call is None or call.last_id != streams.get(as_text(stream)):
                    continue  # the call ended or was re-created meanwhile
                for entry_id, fields in entries:
                    call.deliver(entry_id, fields)
            rest = started + ROUND_MIN_S - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)
