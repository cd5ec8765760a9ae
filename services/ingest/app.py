"""The ingest service: Twilio Media Streams in, mixed frames to Redis out.

Routes:

* ``WebSocket /twilio``: one Twilio Media Stream per connection
  (https://www.twilio.com/docs/voice/media-streams/websocket-messages), once its signature and
  the per-address connection limit are checked; :mod:`services.ingest.streams` reads it, never
  awaiting Redis (Twilio discards audio from a slow reader, error 31930).
* ``GET``/``POST /twiml``: the voice webhook (:mod:`services.ingest.twiml`).
* ``GET /healthz``: ``{"status", "calls", "redis", "writes_ok", "dropped_frames", "pending"}``; 503 when Redis does not
  answer.
* ``GET /metrics``: Prometheus text format (:mod:`services.ingest.metrics`).

:func:`run` serves until ``stop`` is set, then ends every open stream (its remaining audio and
eof), drains the publisher within :data:`DRAIN_GRACE_S` and logs one summary line.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from shared.limits import ConnectionCounter
from shared.metrics import metrics_handler
from shared.redisconn import connect
from shared.service import serving
from shared.settings import IngestSettings

from .admission import Admission, check_settings
from .metrics import ingest_registry
from .publisher import Publisher
from .streams import MAX_MESSAGE_BYTES, MediaStreams
from .twiml import STREAM_PATH, TwilioAuth, voice_webhook

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 5.0
"""How long shutdown waits for the publisher to write what is buffered, s."""

HEALTH_PING_TIMEOUT_S = 1.0
"""How long ``/healthz`` waits for Redis to answer PING, s."""


class Ingest:
    """One ingest app: the routes, the open streams and the publisher they submit to.

    Holds no process-global state, so several can run in one process (``callscribe demo``).
    """

    def __init__(
        self, settings: IngestSettings, publisher: Publisher, admission: Admission
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.admission = admission
        self.auth = TwilioAuth(settings)
        self.connections = ConnectionCounter(settings.max_connections_per_ip)
        self.streams = MediaStreams(settings, publisher, admission)
        self.registry = ingest_registry(self.streams)
        self.app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        self.app.router.add_get(STREAM_PATH, self.twilio_ws)
        self.app.router.add_route("GET", "/twiml", self.twiml)
        self.app.router.add_route("POST", "/twiml", self.twiml)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", metrics_handler(self.registry))

    async def twiml(self, request: web.Request) -> web.Response:
        """The voice webhook."""
        return await voice_webhook(request, self.settings, self.auth, self.admission)

    async def healthz(self, request: web.Request) -> web.Response:
        """200 ``{"status": "ok", …}`` when Redis answers PING, else 503."""
        ok = await self.publisher.ping(HEALTH_PING_TIMEOUT_S)
        body = {
            "status": "ok" if ok else "redis_unavailable",
            "calls": self.streams.live_calls,
            "redis": ok,
            "writes_ok": self.publisher.redis_ok,
            "dropped_frames": self.publisher.dropped_frames,
            "pending": self.publisher.pending,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def twilio_ws(self, request: web.Request) -> web.StreamResponse:
        """Serve one Twilio Media Stream until ``stop``, a close, idleness or unusable media
        format. A handshake without a valid signature gets HTTP 403; one more than
        ``max_connections_per_ip`` from one address gets HTTP 429."""
        if not self.auth.check_ws(request):
            log.warning("stream signature refused", extra={"client": request.remote or "?"})
            return web.Response(status=403, text="invalid Twilio signature\n")
        client = request.remote or "?"
        if not self.connections.acquire(client):
            log.warning("too many streams from one address", extra={"client": client})
            return web.Response(status=429, text="too many connections\n")
        try:
            return await self.streams.serve(request)
        finally:
            self.connections.release(client)


async def run(
    settings: IngestSettings,
    *,
    stop: asyncio.Event,
    bound: asyncio.Future[int] | None = None,
) -> None:
    """Serve ingest on ``settings.host:settings.port`` until ``stop`` is set.

    ``bound`` receives the listening port (useful with port 0). On stop: open streams are
    closed (1012), each open call's remaining audio and eof are queued, the publisher drains
    for at most :data:`DRAIN_GRACE_S`, and one summary line is logged.

    Raises:
        ConfigError: ``TWILIO_AUTH_TOKEN`` or ``PUBLIC_URL`` is missing without ``TWILIO_INSECURE``.
        OSError: the address cannot be bound.
    """
    check_settings(settings)  # and warns (services.ingest.admission) when insecure
    redis = connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s)
    publisher = Publisher(
        redis,
        buffer_frames=settings.write_buffer_frames,
        audio_maxlen=settings.audio_maxlen,
        retention_s=settings.retention_s,
        write_timeout_s=min(settings.redis_socket_timeout_s, 10.0),
    )
    ingest = Ingest(settings, publisher, Admission(redis, settings))
    streams = ingest.streams
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(publisher.run(), name="ingest-publisher")
            async with serving(
                ingest.app, host=settings.host, port=settings.port, bound=bound, name="ingest"
            ):
                watchdog = tg.create_task(streams.watch_idle(), name="ingest-idle")
                await stop.wait()
                watchdog.cancel()
                await streams.close_streams(DRAIN_GRACE_S)
            streams.close_all("shutdown")
            publisher.close()
            done, _ = await asyncio.wait({writer}, timeout=DRAIN_GRACE_S)
            if not done:
                log.error("shutdown: redis writes not drained", extra={"lost": publisher.pending})
                writer.cancel()
    finally:
        log.info(
            "ingest stopped",
            extra={
                "calls_started": streams.calls_started,
                "calls_ended": streams.calls_ended,
                "frames_written": publisher.written_frames,
                "dropped_frames": publisher.dropped_frames,
                "bad_input": streams.bad_input,
                "unwritten": publisher.pending,
            },
        )
        await redis.aclose()
