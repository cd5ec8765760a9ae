"""The ingest service: Twilio Media Streams in, mixed frames to Redis out.

Routes:

* ``WebSocket /twilio``: one Twilio Media Stream per connection
  (https://www.twilio.com/docs/voice/media-streams/websocket-messages). The read loop only
  parses, mixes and submits to the :class:`~services.ingest.publisher.Publisher`; it never
  awaits Redis (Twilio discards audio from a slow reader, error 31930).
* ``GET``/``POST /twiml``: the voice webhook (:mod:`services.ingest.twiml`).
* ``GET /healthz``: ``{"status", "calls", "redis", "dropped_frames"}``; 503 when Redis does not
  answer.

:func:`run` serves until ``stop`` is set, then ends every open stream (its remaining audio and
eof), drains the publisher within :data:`DRAIN_GRACE_S` and logs one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from shared.errors import TwilioMessageError
from shared.redisconn import connect
from shared.schema import AudioFrame
from shared.service import serve_asgi
from shared.settings import IngestSettings

from .publisher import Publisher
from .twilio import FATAL_CODES, Action, CallEnd, CallStart, TwilioStream
from .twiml import STREAM_PATH, TwilioAuth, voice_webhook

log = logging.getLogger(__name__)

DRAIN_GRACE_S = 5.0
"""How long shutdown waits for the publisher to write what is buffered, s."""

ERROR_LOGS_PER_CODE = 3
"""Bad-input lines logged per error code per connection; the rest go in the closing summary."""

HEALTH_PING_TIMEOUT_S = 1.0
"""How long ``/healthz`` waits for Redis to answer PING, s."""


class _Connection:
    """One ``/twilio`` socket: its stream state and the bad input it sent."""

    __slots__ = ("errors", "stream")

    def __init__(self, stream: TwilioStream) -> None:
        self.stream = stream
        self.errors: Counter[str] = Counter()


class Ingest:
    """One ingest app: the routes, the open streams and the publisher they submit to.

    Holds no process-global state, so several can run in one process (``callscribe demo``).
    """

    def __init__(self, settings: IngestSettings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.auth = TwilioAuth(settings)
        self._open: dict[int, _Connection] = {}
        self.calls_started = 0
        self.calls_ended = 0
        self.bad_input = 0
        self.app = Starlette(
            routes=[
                WebSocketRoute(STREAM_PATH, self.twilio_ws),
                Route("/twiml", self.twiml, methods=["GET", "POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
            ]
        )

    @property
    def live_calls(self) -> int:
        """Streams that have started and not ended."""
        return sum(1 for c in self._open.values() if c.stream.phase == "started")

    # ------------------------------------------------------------------ routes

    async def twiml(self, request: Request) -> Response:
        """The voice webhook."""
        return await voice_webhook(request, self.settings, self.auth)

    async def healthz(self, request: Request) -> Response:
        """200 ``{"status": "ok", …}`` when Redis answers PING, else 503."""
        ok = await self.publisher.ping(HEALTH_PING_TIMEOUT_S)
        body = {
            "status": "ok" if ok else "redis_unavailable",
            "calls": self.live_calls,
            "redis": ok,
            "dropped_frames": self.publisher.dropped_frames,
            "pending": self.publisher.pending,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def twilio_ws(self, ws: WebSocket) -> None:
        """Serve one Twilio Media Stream until ``stop``, a close, or unusable media format."""
        if not self.auth.check_ws(ws):
            log.warning("stream signature refused", extra={"client": _peer(ws)})
            await ws.close(code=1008)  # before accept: uvicorn answers HTTP 403
            return
        await ws.accept()
        conn = _Connection(
            TwilioStream(
                frame_ms=self.settings.frame_ms,
                reorder_ms=self.settings.reorder_ms,
                max_gap_ms=self.settings.max_gap_ms,
            )
        )
        self._open[id(conn)] = conn
        reason = "idle"
        try:
            reason = await self._read(ws, conn)
        except TimeoutError:
            log.warning(
                "stream idle: closing",
                extra={
                    "call_sid": conn.stream.call_sid or "-",
                    "idle_s": self.settings.stream_idle_s,
                },
            )
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close(code=1001, reason="idle")
        finally:
            self._end(conn, reason)

    async def _read(self, ws: WebSocket, conn: _Connection) -> str:
        """Read one stream to its end; the reason it ended.

        Raises:
            TimeoutError: nothing arrived for ``stream_idle_s`` (Twilio sends 50 packets a
                second per track, silence included: the peer is gone).
        """
        loop = asyncio.get_running_loop()
        idle_s = self.settings.stream_idle_s
        async with asyncio.timeout(idle_s) as idle:
            while True:
                message = await ws.receive()
                idle.reschedule(loop.time() + idle_s)
                if message["type"] == "websocket.disconnect":
                    return "disconnect"
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                try:
                    actions = conn.stream.feed(raw)
                except TwilioMessageError as exc:
                    self._bad_input(conn, exc)
                    if exc.code in FATAL_CODES:
                        await ws.close(code=1003, reason=exc.code)
                        return exc.code
                    continue
                if actions:
                    self._publish(conn, actions)

    # ------------------------------------------------------------------ helpers

    def close_all(self, reason: str) -> None:
        """End every open stream now (remaining frames, then eof). Used at shutdown."""
        for conn in list(self._open.values()):
            self._end(conn, reason)

    def _end(self, conn: _Connection, reason: str) -> None:
        if self._open.pop(id(conn), None) is None:
            return
        self._publish(conn, conn.stream.close(reason))
        stream = conn.stream
        if sum(conn.errors.values()) or stream.meta is None:
            log.info(
                "stream closed",
                extra={
                    "call_sid": stream.call_sid,
                    "reason": reason,
                    "errors": ",".join(f"{k}:{n}" for k, n in sorted(conn.errors.items())),
                },
            )

    def _publish(self, conn: _Connection, actions: Sequence[Action]) -> None:
        stream = conn.stream
        publisher = self.publisher
        call_sid = stream.call_sid or ""  # frames only come after start, which sets it
        for action in actions:
            if type(action) is AudioFrame:
                publisher.submit_frame(call_sid, action)
            elif isinstance(action, CallStart):
                self.calls_started += 1
                publisher.submit_start(action.meta)
                log.info(
                    "call started",
                    extra={
                        "call_sid": action.meta.call_sid,
                        "stream_sid": action.meta.stream_sid,
                        "channels": action.meta.channels,
                    },
                )
            elif isinstance(action, CallEnd):
                self.calls_ended += 1
                dropped = publisher.submit_eof(action.call_sid, action.end_ms)
                mixer = stream.mixer
                log.info(
                    "call ended",
                    extra={
                        "call_sid": action.call_sid,
                        "reason": action.reason,
                        "end_ms": action.end_ms,
                        "packets": mixer.packets if mixer else 0,
                        "late_packets": mixer.late_packets if mixer else 0,
                        "duplicate_packets": mixer.duplicate_packets if mixer else 0,
                        "lost_ms": mixer.lost_ms if mixer else 0,
                        "dropped_frames": dropped,
                        "bad_input": sum(conn.errors.values()),
                    },
                )

    def _bad_input(self, conn: _Connection, exc: TwilioMessageError) -> None:
        self.bad_input += 1
        conn.errors[exc.code] += 1
        if conn.errors[exc.code] <= ERROR_LOGS_PER_CODE:
            log.warning(
                "bad twilio message",
                extra={"call_sid": conn.stream.call_sid, "code": exc.code, "error": exc.message},
            )


def _peer(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "?"


async def run(
    settings: IngestSettings,
    *,
    stop: asyncio.Event,
    bound: asyncio.Future[int] | None = None,
) -> None:
    """Serve ingest on ``settings.host:settings.port`` until ``stop`` is set.

    ``bound`` receives the listening port (useful with port 0). On stop: uvicorn closes open
    streams (1012), each open call's remaining audio and eof are queued, the publisher drains
    for at most :data:`DRAIN_GRACE_S`, and one summary line is logged.

    Raises:
        OSError: the address cannot be bound.
    """
    redis = connect(settings.redis_url, socket_timeout_s=settings.redis_socket_timeout_s)
    publisher = Publisher(
        redis,
        buffer_frames=settings.write_buffer_frames,
        audio_maxlen=settings.audio_maxlen,
        retention_s=settings.retention_s,
        write_timeout_s=min(settings.redis_socket_timeout_s, 10.0),
    )
    ingest = Ingest(settings, publisher)
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(publisher.run(), name="ingest-publisher")
            await serve_asgi(
                ingest.app,
                host=settings.host,
                port=settings.port,
                stop=stop,
                bound=bound,
                name="ingest",
            )
            ingest.close_all("shutdown")
            publisher.close()
            done, _ = await asyncio.wait({writer}, timeout=DRAIN_GRACE_S)
            if not done:
                log.error("shutdown: redis writes not drained", extra={"lost": publisher.pending})
                writer.cancel()
    finally:
        log.info(
            "ingest stopped",
            extra={
                "calls_started": ingest.calls_started,
                "calls_ended": ingest.calls_ended,
                "frames_written": publisher.written_frames,
                "dropped_frames": publisher.dropped_frames,
                "bad_input": ingest.bad_input,
                "unwritten": publisher.pending,
            },
        )
        await redis.aclose()
