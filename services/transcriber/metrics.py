"""The transcriber's metrics, and the small HTTP server that serves them with ``/healthz``.

The worker has no HTTP server of its own, so :func:`serve_status` gives it one on
``METRICS_HOST:METRICS_PORT`` (by default 127.0.0.1 and a free port, logged at start): replicas
on one host never collide, and nothing is exposed beyond the host unless asked for.

Transcript latency (``callscribe_transcriber_transcript_latency_seconds``, by ``kind`` =
``interim`` / ``final``) is measured per published event as::

    wall time just after the PUBLISH  -  (call's started_at + event.end)

``started_at`` is ingest's wall clock when Twilio's ``start`` arrived and ``event.end`` is the
call time (s) where the speech the result covers ends, so the subtrahend is the wall time at
which that audio was due at ingest had it flowed in real time. The figure therefore includes
ingest's framing (``FRAME_MS`` + ``REORDER_MS``), Redis, the worker's queue, the engine and the
publish; not the gateway's fan-out. A call that waited (``queued``) or was taken over shows the
wait in full, as its users felt it. Clock skew between the ingest and transcriber hosts adds to
it (NTP keeps that to milliseconds); a negative difference is counted as 0.

Audio backlog (``callscribe_transcriber_audio_backlog_seconds``) is, over the worker's calls,
the largest ``now - (started_at + sent_ms / 1000)``: how far behind real time the audio handed
to the engine is (about 0.2 s when keeping up: one frame plus the reorder window).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Histogram

from services.transcriber.health import health_max_age_s
from shared.metrics import CollectorRegistry, ScrapeCollector, counter, gauge, metrics_handler
from shared.retry import REDIS_RETRIES
from shared.schema import TranscriptEvent
from shared.service import serving

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from services.transcriber.call import CallPipeline
    from services.transcriber.worker import Worker

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
"""Histogram buckets of the transcript latency, s: fine below a second (Deepgram), coarse above
(Whisper, queued calls)."""

REDIS_PREFIX = "services.transcriber."
"""Retried Redis failures (:data:`shared.retry.REDIS_RETRIES`) of loggers under this name are
the transcriber's (one process may also hold ingest and gateway: ``callscribe demo``)."""


class TranscriberMetrics:
    """The registry of one worker: a latency histogram and figures read from the worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "callscribe_transcriber_transcript_latency_seconds",
            "Wall time of a result's publication minus the wall time its audio's end was due "
            "(call start + result end)",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._interim = self.latency.labels(kind="interim")
        self._final = self.latency.labels(kind="final")
        self.registry.register(ScrapeCollector(self._collect))

    def published(self, call: CallPipeline, event: TranscriptEvent) -> None:
        """Observe the latency of one event ``call`` has just published."""
        meta = call.meta
        if meta is None or meta.started_at <= 0:
            return
        latency_s = time.time() - (meta.started_at + event.end)
        (self._final if event.is_final else self._interim).observe(max(0.0, latency_s))

    def backlog_s(self) -> float:
        """How far behind real time the most-behind call's audio sent to the engine is, s."""
        now = time.time()
        worst = 0.0
        for call in list(self.worker.calls.values()):
            meta, sent_ms = call.meta, call.sent_ms
            if meta is not None and sent_ms is not None and meta.started_at > 0:
                worst = max(worst, now - (meta.started_at + sent_ms / 1000))
        return worst

    def _collect(self) -> Iterator[Metric]:
        w = self.worker
        yield from (
            gauge("callscribe_transcriber_calls", "Calls this worker serves now", len(w.calls)),
            gauge(
                "callscribe_transcriber_calls_max",
                "MAX_CALLS: calls this worker serves at most",
                w.settings.max_calls,
            ),
            gauge(
                "callscribe_transcriber_calls_queued",
                "Calls waiting for any worker (jobs never delivered), as last seen by this worker",
                w.saturation.queued,
            ),
            counter("callscribe_transcriber_calls_served", "Calls served to their end", w.served),
            gauge(
                "callscribe_transcriber_audio_backlog_seconds",
                "How far behind real time the audio sent to the engine is, worst call",
                self.backlog_s(),
            ),
            counter(
                "callscribe_transcriber_asr_reconnects",
                "Reconnections to the speech engine (Deepgram drops, 429, 5xx)",
                getattr(w.engine, "reconnects", 0),
            ),
            counter(
                "callscribe_transcriber_redis_errors",
                "Redis commands that failed and were retried (this process)",
                sum(n for name, n in REDIS_RETRIES.items() if name.startswith(REDIS_PREFIX)),
            ),
        )


def health(worker: Worker) -> tuple[bool, dict[str, object]]:
    """Whether the worker is healthy (its health key written within three lease periods, and
    its last lease round reached Redis), and the ``/healthz`` body."""
    at = worker.lease.heartbeat_at
    fresh = at is not None and time.monotonic() - at <= health_max_age_s(worker.settings)
    ok = fresh and worker.lease.redis_ok
    return ok, {
        "status": "ok" if ok else "redis_unavailable" if fresh else "stale",
        "consumer": worker.consumer,
        "calls": len(worker.calls),
        "max_calls": worker.settings.max_calls,
        "queued": worker.saturation.queued,
    }


def status_app(worker: Worker) -> web.Application:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200, or 503 while the worker
    cannot reach Redis) of one worker."""

    async def healthz(request: web.Request) -> web.Response:
        ok, body = health(worker)
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(worker.metrics.registry))
    app.router.add_get("/healthz", healthz)
    return app


@asynccontextmanager
async def serve_status(
    worker: Worker, bound: asyncio.Future[int] | None = None
) -> AsyncIterator[int]:
    """Serve :func:`status_app` on ``METRICS_HOST:METRICS_PORT`` for the body; yields the port.

    Raises:
        OSError: the address cannot be bound.
    """
    s = worker.settings
    async with serving(
        status_app(worker),
        host=s.metrics_host,
        port=s.metrics_port,
        bound=bound,
        name="transcriber-metrics",
    ) as port:
        yield port
