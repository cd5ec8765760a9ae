"""Running one client WebSocket: its sender, its reader, and how it closes.

:func:`serve_connection` runs the client's :class:`Outbox` sender and the protocol's reader side
by side, and closes the socket with the code the first of them asks for: the outbox's close
request (1000 call ended, 1008 policy, 1012 restart, 1013 too slow), 1013 when a send times out,
nothing when the client went away. The :class:`Connections` registry lets the gateway close every
client with 1012 on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from websockets.frames import CloseCode

from services.gateway.outbox import SLOW_REASON, CloseRequest, Outbox

log = logging.getLogger(__name__)


class Connections:
    """The open client connections of one gateway instance (no module-level state).

    ``total``: connections accepted; ``slow_closed``: closed with 1013 for reading too slowly;
    ``sent_closed`` / ``dropped_closed``: messages sent and interims dropped by connections
    already removed (the metrics add the open ones' :class:`Outbox` counters).
    """

    def __init__(self) -> None:
        self._open: set[Outbox] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.total = 0
        self.slow_closed = 0
        self.sent_closed = 0
        self.dropped_closed = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, outbox: Outbox) -> None:
        """Register a connection's outbox."""
        self._open.add(outbox)
        self._empty.clear()
        self.total += 1

    def open_outboxes(self) -> list[Outbox]:
        """The outboxes of the open connections (a copy)."""
        return list(self._open)

    def remove(self, outbox: Outbox) -> None:
        """Forget a connection's outbox (idempotent)."""
        if outbox in self._open:
            self.sent_closed += outbox.sent
            self.dropped_closed += outbox.dropped
        self._open.discard(outbox)
        if not self._open:
            self._empty.set()

    async def close_all(self, code: CloseCode, reason: str, timeout_s: float) -> int:
        """Ask every connection to close with ``code`` and wait up to ``timeout_s`` for them.

        Returns how many connections were asked.
        """
        asked = len(self._open)
        for outbox in list(self._open):
            outbox.close(code, reason, drain=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._empty.wait()
        return asked


async def serve_connection(
    ws: web.WebSocketResponse,
    outbox: Outbox,
    reader: Coroutine[Any, Any, None],
    *,
    send_timeout_s: float,
    connections: Connections,
    call_sid: str | None = None,
) -> None:
    """Run sender and ``reader`` until one ends, then close ``ws`` as asked (bounded by
    ``send_timeout_s``). The reader returns when the client disconnects; it may also ask for a
    close through ``outbox.close``. Never raises for a peer's failure."""
    pump = asyncio.create_task(outbox.pump(ws.send_str, send_timeout_s), name="ws-send")
    read = asyncio.create_task(reader, name="ws-read")
    closer = asyncio.create_task(outbox.wait_closing(), name="ws-close")
    request: CloseRequest | None = None
    try:
        done, _ = await asyncio.wait({pump, read, closer}, return_when=asyncio.FIRST_COMPLETED)
        request = outbox.closing
        if request is not None:
            if request.drain and not pump.done():
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(send_timeout_s):
                        await pump
        elif pump in done and isinstance(pump.exception(), TimeoutError):
            request = CloseRequest(CloseCode.TRY_AGAIN_LATER, SLOW_REASON, drain=False)
        elif read in done and read.exception() is not None:
            log.warning(
                "client reader failed",
                extra={"call_sid": call_sid, "error": read.exception().__class__.__name__},
            )
    finally:
        connections.remove(outbox)
        tasks = (pump, read, closer)
        for task in tasks:
            task.cancel()
        if request is not None and request.code == CloseCode.TRY_AGAIN_LATER:
            connections.slow_closed += 1
            log.warning(
                "slow client disconnected",
                extra={"call_sid": call_sid, "dropped": outbox.dropped, "sent": outbox.sent},
            )
        if not ws.closed:
            # Closing before awaiting the tasks also ends a reader whose cancellation a library
            # swallowed: its pending receive gets the closing message.
            await _close(
                ws, request or CloseRequest(CloseCode.INTERNAL_ERROR, "", False), send_timeout_s
            )
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: peer failures are expected here


async def _close(ws: web.WebSocketResponse, request: CloseRequest, timeout_s: float) -> None:
    """Close ``ws`` as ``request`` says, waiting at most ``timeout_s`` for the peer."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            # Not drained: a slow client's buffer may never empty; the close frame follows it.
            await ws.close(code=request.code, message=request.reason.encode(), drain=False)
