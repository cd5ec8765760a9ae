"""The worker's lease loop: keeps its jobs claimed and its health key ``cs:worker:<consumer>`` fresh.

Every ``lease_renew_s``: XCLAIM (min idle half a period, JUSTID) the jobs still pending under
the worker's name, so live calls never look idle to another worker's XAUTOCLAIM
(:func:`services.transcriber.jobs.renew`); stop serving the calls whose job another worker took
and rebuild those whose keys Redis lost (:mod:`services.transcriber.recovery`); then rewrite the
health key (:class:`shared.schema.WorkerHealth`, TTL :func:`health_ttl_ms`), which
``callscribe transcriber --check`` reads (:mod:`services.transcriber.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from services.transcriber.call import CallPipeline
from services.transcriber.health import health_max_age_s
from services.transcriber.jobs import renew
from services.transcriber.recovery import audit, restore
from shared import keys
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.schema import WorkerHealth
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)


def health_ttl_ms(settings: TranscriberSettings) -> int:
    """TTL of the health key, ms: :func:`~services.transcriber.health.health_max_age_s`."""
    return int(health_max_age_s(settings) * 1000)


class Lease:
    """The lease and health of one worker (consumer ``settings.consumer``).

    Args:
        redis: the worker's client.
        settings: ``consumer``, ``lease_renew_s`` (s) and ``max_calls`` are used.
        calls: the worker's call registry, ``{callSid: call}``; read, never written here.
        tasks: the task serving each call of ``calls``, ``{callSid: task}``; a call taken by
            another worker has its task cancelled.
        health: ``{"asr_ok": bool}``, kept up to date by the start-up probe
            (:func:`services.transcriber.probe.probe_until_ok`); written into the health key.

    Attributes:
        heartbeat_at: :func:`time.monotonic` of the last health key write, None before it.
        redis_ok: False from a failed lease round until the next one succeeds.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: TranscriberSettings,
        calls: Mapping[str, CallPipeline],
        tasks: Mapping[str, asyncio.Task[None]],
        health: Mapping[str, bool],
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = settings.consumer
        self.calls = calls
        self.tasks = tasks
        self.health = health
        self.heartbeat_at: float | None = None
        self.redis_ok = True

    async def run(self) -> None:
        """Renew and write the health key every ``lease_renew_s`` until cancelled; Redis
        failures are logged and retried with backoff (never raises but
        :class:`asyncio.CancelledError`)."""
        backoff = Backoff()
        while True:
            try:
                await self.renew()
                record = WorkerHealth(
                    calls=len(self.calls),
                    ts=round(time.time(), 3),
                    asr_ok=self.health.get("asr_ok", True),
                )
                await cmd(
                    self.redis.set(
                        keys.worker(self.consumer),
                        record.to_redis(),
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

    async def renew(self) -> None:
        """Re-claim our pending jobs; abandon the calls whose job another worker took, and
        rebuild those whose keys Redis lost (:mod:`services.transcriber.recovery`).

        Raises:
            RedisError, OSError: Redis failed (:meth:`run` retries).
        """
        owned = {c.job_id: c for c in self.calls.values() if not c.ended}
        if not owned:
            return
        mine = await renew(
            self.redis,
            self.consumer,
            owned.values(),
            self.settings.lease_renew_s,
            self.settings.max_calls,
        )
        taken, vanished = await audit(self.redis, owned, mine)
        for call in taken:
            log.warning(
                "call lost to another worker", extra={"call_sid": call.sid, "job": call.job_id}
            )
            task = self.tasks.get(call.sid)
            if task is not None:
                task.cancel()
        for call in vanished:  # Redis lost them (restarted without persistence): rebuild
            await restore(self.redis, call, self.consumer)

    async def drop_health(self) -> None:
        """Delete the health key (a stopping worker); best effort: a Redis failure or a
        reply later than 1 s is ignored (the key then expires with its TTL)."""
        with contextlib.suppress(*REDIS_FAILURES):
            async with asyncio.timeout(1.0):
                await cmd(self.redis.delete(keys.worker(self.consumer)))
