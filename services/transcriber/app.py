"""``run(settings)``: one transcriber worker (usable several times in one process), with its
``/metrics`` and ``/healthz`` server (:mod:`services.transcriber.metrics`)."""

from __future__ import annotations

import asyncio

from services.transcriber.choose_engine import make_engine
from services.transcriber.engine import AsrEngine
from services.transcriber.metrics import serve_status
from services.transcriber.probe import Probe, probe_until_ok
from services.transcriber.webhooks import Notifier
from services.transcriber.webhooks import urls as webhook_urls
from services.transcriber.worker import Worker
from shared.aio import cancel_and_wait
from shared.redisconn import connect
from shared.settings import TranscriberSettings


async def run(
    settings: TranscriberSettings,
    *,
    stop: asyncio.Event,
    bound: asyncio.Future[int] | None = None,
    engine: AsrEngine | None = None,
    probe: Probe | None = None,
) -> None:
    """Serve calls until ``stop`` is set.

    ``bound`` receives the port of the worker's ``/metrics`` and ``/healthz`` server
    (``METRICS_HOST:METRICS_PORT``; port 0 = a free one).
    ``engine``: an engine to use instead of :func:`make_engine` (tests); it is not closed here.
    ``probe``: the verdict of the start-up Deepgram probe (``callscribe transcriber``); while it
    is UNREACHABLE the worker re-probes and its health key says ``asr_ok: false``.

    Raises:
        AsrError: the configured engine cannot be created (e.g. whisper without faster-whisper).
        OSError: the metrics address cannot be bound.
    """
    own_engine = engine is None
    asr = engine if engine is not None else make_engine(settings)
    longest_block_s = max(settings.read_block_ms, settings.job_block_ms) / 1000
    socket_timeout_s = max(settings.redis_socket_timeout_s, longest_block_s + 5.0)
    # a pool that waits for a free connection: 500 calls' commands can outnumber its 100
    # connections for a moment (MaxConnectionsError under benchmarks/load.py otherwise)
    redis = connect(
        settings.redis_url,
        socket_timeout_s=socket_timeout_s,
        pool_max_connections=100,
        pool_timeout_s=10.0,
    )
    worker = Worker(settings, redis, asr)
    reprobe = (
        asyncio.create_task(probe_until_ok(settings, probe, worker.health), name="asr-probe")
        if probe is not None
        else None
    )
    notifier = (
        asyncio.create_task(Notifier(settings, redis).run(), name="webhooks")
        if webhook_urls(settings)
        else None
    )
    try:
        async with serve_status(worker, bound):
            await worker.run(stop)
    finally:
        if notifier is not None:
            await cancel_and_wait(notifier)
        if reprobe is not None:
            await cancel_and_wait(reprobe)
        if own_engine:
            await asr.aclose()
        await redis.aclose()
