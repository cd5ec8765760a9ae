"""``python -m services.transcriber --check``: is a worker alive? (its health key is fresh).

The key ``cs:worker:<consumer>`` holds a :class:`shared.schema.WorkerHealth`, written by the
worker's lease loop (:mod:`services.transcriber.lease`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from shared import keys
from shared.redisconn import connect, is_memory
from shared.retry import REDIS_FAILURES
from shared.schema import WorkerHealth
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)


def health_max_age_s(settings: TranscriberSettings) -> float:
    """How old a worker's health record may be and still count as alive, s: three lease
    periods (``lease_renew_s``), at least one second. Also the health key's TTL."""
    return max(1.0, 3 * settings.lease_renew_s)


def is_fresh(raw: bytes | str | None, *, now_s: float, max_age_s: float) -> bool:
    """True when a health key's value (:class:`WorkerHealth`, as GET returns it) was written
    at most ``max_age_s`` (s) before ``now_s`` (Unix s) and does not say the speech engine is
    unreachable (``asr_ok`` false). False for a missing (None) or unreadable value."""
    try:
        health = WorkerHealth.from_redis(raw)
    except ValueError:
        return False
    return now_s - health.ts <= max_age_s and health.asr_ok


async def check(
    settings: TranscriberSettings, consumer: str | None = None, timeout_s: float = 5.0
) -> bool:
    """True when the health key of ``consumer`` is fresh.

    Without ``consumer``: the ``CONSUMER`` setting when it was set explicitly, else any worker
    of this host (``<hostname>-*``, the default consumer names), so that a container's
    healthcheck judges its own worker and not a sibling replica's. A worker refreshes its key
    every ``lease_renew_s``; fresh = younger than three periods.
    False when Redis cannot be reached within ``timeout_s`` or for ``memory://`` (another process
    cannot see an in-process Redis).
    """
    if is_memory(settings.redis_url):
        return False
    max_age_s = health_max_age_s(settings)
    redis = connect(settings.redis_url, socket_timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            if consumer is None and "consumer" in settings.model_fields_set:
                consumer = settings.consumer
            if consumer:
                names = [keys.worker(consumer)]
            else:
                mine = keys.WORKERS_PREFIX + _glob_escape(socket.gethostname()) + "-*"
                names = [k async for k in redis.scan_iter(match=mine, count=100)]
            now_s = time.time()
            for name in names:
                if is_fresh(await redis.get(name), now_s=now_s, max_age_s=max_age_s):
                    return True
            return False
    except REDIS_FAILURES as exc:  # TimeoutError is an OSError, so among them
        log.warning("health check failed", extra={"error": exc.__class__.__name__})
        return False
    finally:
        await redis.aclose()


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, for SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
