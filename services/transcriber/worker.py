"""The transcriber worker: claims calls from the ``cs:{p}:jobs`` streams and keeps their registry.

Loops under one TaskGroup, plus one task per owned call. A *group* is the set of partitions one
multi-key command can serve (:func:`shared.cluster.partition_groups`): all twelve on a single
Redis, one on a cluster. Per group:

* *claim* (here): once a lease period, XAUTOCLAIM jobs idle longer than ``claim_idle_ms`` (a
  dead worker's calls, https://redis.io/docs/latest/commands/xautoclaim/); then XREADGROUP ``>``
  over the group's job streams for this loop's share of the free capacity (``max_calls``), BLOCK
  ``job_block_ms`` (at most a lease period): an idle worker waits in Redis and is woken by the
  first new job, it does not poll. A worker with fewer free slots than groups blocks only
  ``read_block_ms`` so that every partition is read in turn
  (https://redis.io/docs/latest/commands/xreadgroup/).
* *audio* (:class:`services.transcriber.audio_reader.AudioReader`): one XREAD BLOCK over the
  audio streams of every owned call in the group's partitions, from each call's last ID; a call
  whose queue is full is left out of the round until it drains, so backpressure stays in Redis.

And once per worker, *lease* (:class:`services.transcriber.lease.Lease`): every
``lease_renew_s``, XCLAIM (min idle half a period, JUSTID) the jobs still pending under our
name, so live calls never look idle (a job that another worker took is abandoned here); refresh
the health key ``cs:worker:<consumer>`` (:class:`shared.schema.WorkerHealth`, TTL 3 leases).

Redis failures never end the worker: each loop backs off with jitter and resumes. The job-stream
writes (hand-over, give-back, lease renewal) are in :mod:`services.transcriber.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.transcriber.audio_reader import AudioReader
from services.transcriber.call import CallPipeline
from services.transcriber.engine import AsrEngine
from services.transcriber.jobs import ensure_groups, give_back, hand_over
from services.transcriber.lease import Lease
from services.transcriber.live import LivePublisher
from services.transcriber.metrics import TranscriberMetrics
from services.transcriber.queueing import Saturation
from shared import keys
from shared.cluster import partition_groups, ready
from shared.redisconn import as_text, stream_id_tuple
from shared.replies import batches
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)


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
        self._groups = partition_groups(redis)
        self._wake = {tag: asyncio.Event() for tags in self._groups for tag in tags}
        for tags in self._groups:  # one event per audio reader, shared by its partitions
            for tag in tags:
                self._wake[tag] = self._wake[tags[0]]
        self._capacity = asyncio.Event()
        self._reserved = 0  # free slots promised to a claim read in flight
        self._cursors: dict[str, str] = {}  # XAUTOCLAIM position per job stream
        self._tg: asyncio.TaskGroup | None = None
        self.served = 0
        self.health: dict[str, bool] = {"asr_ok": True}  # the start-up probe's verdict (probe.py)
        self.lease = Lease(redis, settings, self.calls, self._tasks, self.health)
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
            await ready(self.redis)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                loops = [tg.create_task(self.lease.run(), name="lease")]
                for tags in self._groups:
                    loops.append(tg.create_task(self._claim_loop(tags), name="claim"))
                    wake, block_ms = self._wake[tags[0]], self.settings.read_block_ms
                    reader = AudioReader(self.redis, self.calls, tags, wake, block_ms)
                    loops.append(tg.create_task(reader.run(), name="audio"))
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
            await hand_over(self.redis, self.consumer, unfinished, self.settings.claim_idle_ms)
            await self.lease.drop_health()
            log.info(
                "worker stopped",
                extra={
                    "consumer": self.consumer,
                    "served": self.served,
                    "handed_over": handed_over,
                },
            )

    # ------------------------------------------------------------------ claiming

    def _free(self) -> int:
        return self.settings.max_calls - len(self._tasks)

    def _reserve(self) -> int:
        """Promise a claim read this loop's share of the free slots; 0 when none is left."""
        share = max(1, self.settings.max_calls // len(self._groups))
        n = min(share, self._free() - self._reserved)
        if n <= 0:
            return 0
        self._reserved += n
        return n

    def _release(self, n: int) -> None:
        self._reserved -= n
        self._capacity.set()

    async def _claim_loop(self, tags: list[str]) -> None:
        """Read new jobs of the partitions ``tags`` with one blocking XREADGROUP at a time."""
        backoff = Backoff()
        streams = [keys.jobs(t) for t in tags]
        group_ready = False
        stale_due = 0.0
        while True:
            n = reserved = 0
            try:
                if not group_ready:
                    await ensure_groups(self.redis, streams)
                    group_ready = True
                n = reserved = self._reserve()
                if n <= 0:
                    if self._free() <= 0 and tags == self._groups[0]:
                        await self.saturation.full(self.redis)
                    self._capacity.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.read_block_ms / 1000):
                            await self._capacity.wait()
                    continue
                now = asyncio.get_running_loop().time()
                if now >= stale_due:  # a dead worker's jobs, at most once a lease period
                    stale_due = now + self.settings.lease_renew_s
                    n -= await self._claim_stale(streams, n)
                    if n <= 0:
                        continue
                idle = self._free() >= len(self._groups)  # every group can read at once
                block = self.settings.job_block_ms if idle else self.settings.read_block_ms
                block = min(block, int(self.settings.lease_renew_s * 1000) + 1)
                resp = await cmd(
                    self.redis.xreadgroup(
                        keys.JOBS_GROUP,
                        self.consumer,
                        dict.fromkeys(streams, ">"),
                        count=max(1, n // len(streams)),  # COUNT is per stream
                        block=block,
                    )
                )
                got = [(as_text(st), jid, f) for st, batch in batches(resp) for jid, f in batch]
                got.sort(key=lambda job: stream_id_tuple(job[1]))  # oldest first, any partition
                if len(got) < n:
                    self.saturation.drained()
                for stream, job_id, fields in got[:n]:
                    await self._take(stream, job_id, fields, reclaimed=False)
                if len(got) > n:
                    await give_back(self.redis, got[n:])
                backoff.reset()
            except REDIS_FAILURES as exc:
                if isinstance(exc, ResponseError) and (
                    "NOGROUP" in str(exc) or "no such key" in str(exc)
                ):
                    group_ready = False
                await backoff.retry_after(exc, log, "redis unavailable", loop="claim")
            finally:
                if reserved > 0:
                    self._release(reserved)

    async def _claim_stale(self, streams: list[str], n: int) -> int:
        """XAUTOCLAIM up to ``n`` jobs idle longer than ``claim_idle_ms`` from ``streams`` (a dead
        worker's calls, or calls handed over); returns how many were taken.

        Each stream keeps its scan position between rounds (XAUTOCLAIM looks at no more than
        10 x COUNT entries a call), so a stale job behind many live ones is reached.
        """
        taken = 0
        for stream in streams:
            if taken >= n:
                break
            try:
                cursor_next, claimed, *_ = await cmd(
                    self.redis.xautoclaim(
                        stream,
                        keys.JOBS_GROUP,
                        self.consumer,
                        min_idle_time=self.settings.claim_idle_ms,
                        start_id=self._cursors.get(stream, "0-0"),
                        count=n - taken,
                    )
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                    raise
                self._cursors.pop(stream, None)  # not created yet (or lost with a restart)
                continue
            self._cursors[stream] = as_text(cursor_next)
            for job_id, fields in claimed:
                await self._take(stream, job_id, fields, reclaimed=True)
                taken += 1
        return taken

    async def _take(
        self, stream: str, job_id: bytes, fields: dict[bytes, bytes] | None, *, reclaimed: bool
    ) -> None:
        """Start serving the call of one job (or drop a job that names no call)."""
        jid = as_text(job_id)
        sid = as_text(fields.get(b"call_sid", b"")) if fields else ""
        if sid in self.calls and self.calls[sid].job_id == jid:
            return  # already ours
        if not sid or sid in self.calls or stream != keys.jobs(keys.tag_of(sid)):
            log.warning("bad or duplicate job dropped", extra={"call_sid": sid or "-", "job": jid})
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, keys.JOBS_GROUP, jid)
                pipe.xdel(stream, jid)
                await pipe.execute()
            return
        assert self._tg is not None
        deliveries = 1
        if reclaimed:
            info = await cmd(
                self.redis.xpending_range(stream, keys.JOBS_GROUP, min=jid, max=jid, count=1)
            )
            deliveries = int(info[0]["times_delivered"]) if info else 1
        call = CallPipeline(
            sid,
            jid,
            self.redis,
            self.engine,
            self.settings,
            self._wake[keys.tag_of(sid)],
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
