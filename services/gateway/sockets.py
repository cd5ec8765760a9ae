"""What both client WebSockets share: the handshake, authentication, expiry and limits.

Both endpoints first pass :class:`~services.gateway.guard.Guard` (Origin, connections per
address: HTTP 403/429 before the upgrade; :func:`guarded`), then authenticate
(:func:`authenticate`, :mod:`services.gateway.auth`: an invalid token gets the handshake and an
immediate close 1008 ``unauthorized: …``, nothing else). The connection is closed with 1008
when its token expires (:func:`close_on_expiry`). Close codes are RFC 6455's
(https://www.rfc-editor.org/rfc/rfc6455#section-7.4.1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web
from websockets.frames import CloseCode

from services.gateway.auth import Grant, presented_token
from services.gateway.outbox import DirectWriter, Outbox
from services.gateway.state import Gateway
from shared.errors import Unauthorized

log = logging.getLogger(__name__)


HEARTBEAT_S = 20.0
"""Ping interval of client WebSockets; a peer that does not answer within half of it is gone."""

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
"""Largest message a client may send (a subscribe is under 200 bytes); larger closes with 1009."""

DISCONNECT = object()
"""What :func:`receive_text` returns once the client has gone or closed."""

IDLE = object()
"""What :func:`receive_text` returns when nothing arrived within its timeout."""


async def receive_text(
    ws: web.WebSocketResponse, timeout_s: float | None = None
) -> str | object | None:
    """The next message's text (binary frames decoded as UTF-8), ``None`` for a frame that
    carries no text, :data:`IDLE` when nothing came within ``timeout_s``, or
    :data:`DISCONNECT` once the client closed or the connection failed."""
    try:
        message = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        return IDLE
    if message.type is WSMsgType.TEXT:
        return str(message.data)
    if message.type is WSMsgType.BINARY:
        return bytes(message.data).decode("utf-8", errors="replace")
    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return DISCONNECT
    return None


async def accept(request: web.Request, outbox: Outbox) -> web.WebSocketResponse:
    """Complete the WebSocket handshake of a client request (pings every :data:`HEARTBEAT_S`)
    and let ``outbox`` write straight to its socket while it keeps up."""
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, max_msg_size=MAX_CLIENT_MESSAGE_BYTES, compress=False
    )
    await ws.prepare(request)
    if request.transport is not None:
        outbox.direct = DirectWriter(request.transport, lambda: ws.closed)
    return ws


def new_outbox(gw: Gateway) -> Outbox:
    """An outbox with the gateway's per-client limits (messages and bytes)."""
    return Outbox(gw.settings.client_queue_max, gw.settings.client_queue_max_bytes)


async def authenticate(
    request: web.Request, gw: Gateway, outbox: Outbox
) -> tuple[web.WebSocketResponse, Grant | None]:
    """Accept the handshake and check the token; a refused one is closed with 1008 at once
    (before anything else is sent) and ``None`` returned."""
    try:
        grant: Grant | None = await gw.auth.grant(presented_token(request, query=True))
        why = ""
    except Unauthorized as exc:
        grant, why = None, exc.message
    ws = await accept(request, outbox)
    if grant is None:
        gw.refused_tokens += 1
        log.info("websocket refused", extra={"path": request.path, "reason": why})
        await ws.close(
            code=CloseCode.POLICY_VIOLATION, message=f"unauthorized: {why}"[:123].encode()
        )
    return ws, grant


def close_on_expiry(outbox: Outbox, grant: Grant) -> asyncio.TimerHandle | None:
    """Close the connection with 1008 once ``grant``'s token expires."""
    if grant.expires_at is None:
        return None
    loop = asyncio.get_running_loop()
    delay_s = max(0.0, grant.expires_at - time.time())
    return loop.call_later(
        delay_s,
        functools.partial(
            outbox.close, CloseCode.POLICY_VIOLATION, "unauthorized: token expired", drain=False
        ),
    )


async def guarded(
    request: web.Request,
    gw: Gateway,
    serve: Callable[[web.Request, Gateway], Awaitable[web.WebSocketResponse]],
) -> web.StreamResponse:
    """Run ``serve`` within the per-address connection limit (429 beyond it); a client that
    leaves during the handshake is no error."""
    refused = gw.guard.open_ws(request)
    if refused is not None:
        return refused
    try:
        return await serve(request, gw)
    except ConnectionResetError:  # the client left during the handshake: nothing to answer
        log.info("client left during the handshake", extra={"path": request.path})
        return web.Response(status=499)
    finally:
        gw.guard.close_ws(request)
