"""``/client``: the Deepgram–Twilio tutorial's client protocol, kept for its watchers.

``/client`` (docs/protocol.md, "WebSocket /client"; the Deepgram–Twilio tutorial's protocol):
the server sends a JSON array of active callSids; the client sends one callSid as text
(whitespace stripped); an unknown one is closed with 1008; otherwise the call's history is
replayed, then it continues live (no gap, no duplicate), every message in Deepgram's ``Results``
shape, and the socket is closed with 1000 once the call has ended. Anything else the client
sends is ignored.
See :mod:`services.gateway.sockets` for the handshake, authentication and limits.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from websockets.frames import CloseCode

from services.gateway import store
from services.gateway.connection import serve_connection
from services.gateway.sockets import (
    DISCONNECT,
    IDLE,
    authenticate,
    close_on_expiry,
    guarded,
    new_outbox,
    receive_text,
)
from services.gateway.state import Gateway
from services.gateway.subscribers import CallSubscriber
from shared.errors import ClientMessageError, RedisUnavailable
from shared.schema import CALL_SID_RE

log = logging.getLogger(__name__)


async def tutorial_endpoint(request: web.Request, gw: Gateway) -> web.StreamResponse:
    """``/client``: the tutorial's protocol, unchanged (see the module docstring)."""
    return await guarded(request, gw, _tutorial)


async def _tutorial(request: web.Request, gw: Gateway) -> web.WebSocketResponse:
    outbox = new_outbox(gw)
    ws, grant = await authenticate(request, gw, outbox)
    if grant is None:
        return ws
    gw.connections.add(outbox)
    sub: list[CallSubscriber] = []
    expiry = close_on_expiry(outbox, grant)

    async def reader() -> None:
        try:
            if grant.all_calls:
                sids = await store.active_sids(gw.hub.redis, gw.hub.redis_timeout_s)
            else:
                sids = [c.call_sid for c in await gw.visible_calls(grant)]
        except RedisUnavailable:
            outbox.close(CloseCode.INTERNAL_ERROR, "redis unavailable", drain=False)
            return
        outbox.put(json.dumps(sids))
        text = await receive_text(ws, gw.settings.client_idle_s)
        if text is IDLE:
            outbox.close(CloseCode.POLICY_VIOLATION, "idle: send a callSid", drain=False)
            return
        if not isinstance(text, str):
            return
        call_sid = text.strip()
        if not CALL_SID_RE.match(call_sid):
            log.info("client sent no callSid", extra={"length": len(call_sid)})
            outbox.close(CloseCode.POLICY_VIOLATION, "unknown callSid", drain=True)
            return
        try:
            if not await gw.visible(grant, call_sid):
                raise ClientMessageError("unknown_call", "no such call")
            since = "0" if grant.history else None
            sub.append(await gw.hub.attach_call(call_sid, outbox, since=since, deepgram=True))
        except ClientMessageError:
            log.info("client asked for an unknown call", extra={"call_sid": call_sid[:64]})
            outbox.close(CloseCode.POLICY_VIOLATION, "unknown callSid", drain=True)
            return
        except RedisUnavailable:
            outbox.close(CloseCode.INTERNAL_ERROR, "redis unavailable", drain=False)
            return
        while await receive_text(ws) is not DISCONNECT:
            pass  # the tutorial's clients send nothing more; ignore it if they do

    try:
        await serve_connection(
            ws,
            outbox,
            reader(),
            send_timeout_s=gw.settings.send_timeout_s,
            connections=gw.connections,
        )
    finally:
        if expiry is not None:
            expiry.cancel()
        for s in sub:
            gw.hub.detach(s)
    return ws
