"""The open ``/twilio`` Media Streams of one ingest instance, and the loop that reads each.

Per socket (https://www.twilio.com/docs/voice/media-streams/websocket-messages) the read loop
parses each message into its :class:`~services.ingest.twilio.TwilioStream`, awaits admission once
at ``start``, and submits what the stream yields (start, mixed frames, eof) to the
:class:`~services.ingest.publisher.Publisher`; it never awaits Redis (Twilio discards audio from
a slow reader, error 31930). A socket sending faster than ``stream_max_msgs_per_s`` is read
slower, not dropped. Bad input is counted per error code and logged
:data:`ERROR_LOGS_PER_CODE` times per connection; the rest goes in the closing line.

No timer per message: one idle watchdog for all streams compares each socket's message count
between its rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence

from aiohttp import WSMsgType, web
from websockets.frames import CloseCode

from shared.errors import TwilioMessageError
from shared.limits import pace_delay_s
from shared.schema import AudioFrame
from shared.settings import IngestSettings

from .admission import Admission, Verdict
from .metrics import StreamTotals
from .mixer import Mixer
from .publisher import Publisher
from .twilio import FATAL_CODES, Action, CallEnd, CallStart, Phase, TwilioStream

log = logging.getLogger(__name__)

ERROR_LOGS_PER_CODE = 3
"""Bad-input lines logged per error code per connection; the rest go in the closing summary."""

PACE_EVERY = 256
"""The read loop checks a socket's message rate once per this many messages."""

MAX_MESSAGE_BYTES = 1 << 20
"""Largest WebSocket message accepted on ``/twilio``; a media message is about 300 bytes."""


class _Connection:
    """One ``/twilio`` socket: its stream state, the bad input it sent, and how much arrived.

    ``received`` counts messages; the idle watchdog compares it between its rounds instead of
    rescheduling a timer per message.
    """

    __slots__ = ("errors", "idle", "opened_at", "quiet_since", "received", "seen", "stream", "ws")

    def __init__(self, stream: TwilioStream, ws: web.WebSocketResponse, now: float) -> None:
        self.stream = stream
        self.ws = ws
        self.opened_at = now
        self.errors: Counter[str] = Counter()
        self.received = 0
        self.seen = 0
        self.quiet_since = now
        self.idle = False


class MediaStreams:
    """The open ``/twilio`` streams of one ingest instance and what they have counted.

    ``calls_started``, ``calls_ended``, ``bad_input`` (messages refused) and ``totals`` (counts
    of ended streams) only grow; ``/metrics`` reads them at scrape time.
    """

    def __init__(
        self, settings: IngestSettings, publisher: Publisher, admission: Admission
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.admission = admission
        self._open: dict[int, _Connection] = {}
        self._closers: set[asyncio.Task[None]] = set()
        self.calls_started = 0
        self.calls_ended = 0
        self.bad_input = 0
        self.totals = StreamTotals()

    @property
    def live_calls(self) -> int:
        """Streams that have started and not ended."""
        return sum(1 for c in self._open.values() if c.stream.phase is Phase.STARTED)

    def stream_counts(self) -> Iterator[tuple[int, Mixer | None, bool]]:
        """Per open ``/twilio`` socket: (messages received, its mixer, whether its call is live)."""
        for c in list(self._open.values()):
            yield c.received, c.stream.mixer, c.stream.phase is Phase.STARTED

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        """Accept the WebSocket and read its stream until a close, idleness, a fatal message or
        a refused ``start``; then end the stream (remaining frames, then eof)."""
        # No heartbeat: Twilio sends 50 packets a second per track, silence included, so the
        # idle watchdog (one task for all streams) finds a dead peer without a timer per message.
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, compress=False)
        await ws.prepare(request)
        conn = _Connection(
            TwilioStream(
                frame_ms=self.settings.frame_ms,
                reorder_ms=self.settings.reorder_ms,
                max_gap_ms=self.settings.max_gap_ms,
                silence_budget_ms=self.settings.silence_budget_ms,
            ),
            ws,
            asyncio.get_running_loop().time(),
        )
        self._open[id(conn)] = conn
        reason = "disconnect"
        try:
            reason = await self._read(ws, conn)
        finally:
            self._end(conn, "idle" if conn.idle else reason)
        return ws

    async def _read(self, ws: web.WebSocketResponse, conn: _Connection) -> str:
        """Read one stream to its end; the reason it ended (``disconnect`` or an error code)."""
        stream = conn.stream
        async for message in ws:
            conn.received += 1
            if not conn.received % PACE_EVERY and (delay_s := self._pace(conn)):
                await asyncio.sleep(delay_s)  # faster than STREAM_MAX_MSGS_PER_S: read slower
            if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
                raw = message.data
            else:  # ERROR: the reader failed (oversized or malformed frame); aiohttp closes
                return "disconnect"
            try:
                actions = stream.feed(raw)
            except TwilioMessageError as exc:
                self._bad_input(conn, exc)
                if exc.code in FATAL_CODES:
                    await ws.close(code=FATAL_CODES[exc.code], message=exc.code.encode())
                    return exc.code
                continue
            if actions:
                if type(actions[0]) is CallStart and not await self._admit(ws, conn, actions[0]):
                    return "refused"
                self._publish(conn, actions)
        return "disconnect"

    def _pace(self, conn: _Connection) -> float:
        """Seconds to pause a socket sending faster than ``stream_max_msgs_per_s`` on average."""
        elapsed_s = asyncio.get_running_loop().time() - conn.opened_at
        return pace_delay_s(conn.received, elapsed_s, self.settings.stream_max_msgs_per_s)

    async def _admit(self, ws: web.WebSocketResponse, conn: _Connection, start: CallStart) -> bool:
        """Await the admission of a stream's ``start`` (once per call; media waits in the
        socket meanwhile). A refused stream is closed with 1008 and publishes nothing."""
        verdict = await self.admission.admit(start.meta, start.stream_token)
        if verdict is Verdict.ADMITTED:
            return True
        conn.stream.refuse()
        await _close(ws, CloseCode.POLICY_VIOLATION, verdict.value)
        return False

    async def watch_idle(self) -> None:
        """Close every ``/twilio`` socket that sent nothing for ``stream_idle_s`` (1001), for
        ever; a quarter of that period (at most 1 s) apart. Its stream ends with reason
        ``idle``."""
        idle_s = self.settings.stream_idle_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = loop.time()
            for conn in list(self._open.values()):
                if conn.received != conn.seen:
                    conn.seen = conn.received
                    conn.quiet_since = now
                elif now - conn.quiet_since >= idle_s and not conn.idle:
                    conn.idle = True
                    log.warning(
                        "stream idle: closing",
                        extra={"call_sid": conn.stream.call_sid or "-", "idle_s": idle_s},
                    )
                    task = asyncio.create_task(_close(conn.ws, CloseCode.GOING_AWAY, "idle"))
                    self._closers.add(task)
                    task.add_done_callback(self._closers.discard)

    async def close_streams(self, timeout_s: float) -> None:
        """Close every open ``/twilio`` socket with 1012 (service restart), waiting at most
        ``timeout_s`` for the peers; their streams end as on a disconnect."""
        conns = list(self._open.values())
        if conns:
            await asyncio.wait(
                [asyncio.create_task(_close(c.ws, CloseCode.SERVICE_RESTART, "")) for c in conns],
                timeout=timeout_s,
            )

    def close_all(self, reason: str) -> None:
        """End every open stream now (remaining frames, then eof). Used at shutdown."""
        for conn in list(self._open.values()):
            self._end(conn, reason)

    # ------------------------------------------------------------------ helpers

    def _end(self, conn: _Connection, reason: str) -> None:
        if self._open.pop(id(conn), None) is None:
            return
        self._publish(conn, conn.stream.close(reason))
        stream = conn.stream
        self.totals.retire(conn.received, stream.mixer)
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


async def _close(ws: web.WebSocketResponse, code: CloseCode, reason: str) -> None:
    """Close ``ws`` with ``code``, at most 1 s for the peer's answer; never raises."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await ws.close(code=code, message=reason.encode())
