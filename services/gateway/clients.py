"""The two WebSocket client protocols: ``/client`` (the tutorial's) and ``/v1/ws`` (JSON).

``/client`` (docs/protocol.md, "WebSocket /client"; the Deepgram–Twilio tutorial's protocol):
the server sends a JSON array of active callSids; the client sends one callSid as text
(whitespace stripped); an unknown one is closed with 1008; otherwise the call's history is
replayed, then it continues live (no gap, no duplicate), every message in Deepgram's ``Results``
shape, and the socket is closed with 1000 once the call has ended. Anything else the client
sends is ignored.

``/v1/ws`` (docs/protocol.md, "WebSocket /v1/ws"; models in :mod:`shared.schema`):

* ``{"type": "list"}`` → ``{"type": "calls", "calls": [CallMeta…]}``, then ``call_started`` /
  ``call_updated`` (``queued`` ↔ ``live``) / ``call_ended`` pushed as they happen (a repeated
  ``list`` sends a fresh snapshot).
* ``{"type": "subscribe", "call_sid", "since"}`` → ``{"type": "subscribed", "call_sid"}``, the
  finals after ``since`` (``"0"`` = all, null = none), then live events, ``end`` when the call is
  over (at once after the replay if it already was). Several calls per connection.
* ``{"type": "unsubscribe", "call_sid"}`` → ``{"type": "unsubscribed", "call_sid"}``.
* Errors are ``error`` events (``bad_json``, ``bad_request``, ``unknown_call``,
  ``already_subscribed``, ``not_subscribed``, ``too_many_subscriptions``, ``unavailable``); the
  connection stays open until :data:`MAX_CONSECUTIVE_ERRORS` in a row, then closes with 1008.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from services.gateway import history, store
from services.gateway.connection import Connections, serve_connection
from services.gateway.hub import Hub
from services.gateway.outbox import CLOSE_INTERNAL, CLOSE_POLICY, DirectWriter, Outbox
from services.gateway.subscribers import CallSubscriber, CallsWatcher
from shared.errors import ClientMessageError, RedisUnavailable
from shared.schema import (
    ErrorEvent,
    HistoryRequest,
    ListRequest,
    SubscribeRequest,
    parse_client,
)
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 10
"""Bad ``/v1/ws`` messages in a row before the connection is closed with 1008."""

_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a /client callSid may look like before it is looked up (Twilio's are ``CA`` + 32 hex)."""

MAX_SUBSCRIPTIONS = 100
"""Calls one ``/v1/ws`` connection may follow at once."""


@dataclass
class Gateway:
    """One gateway instance's state: its settings, hub and open connections."""

    settings: GatewaySettings
    hub: Hub
    connections: Connections


HEARTBEAT_S = 20.0
"""Ping interval of client WebSockets; a peer that does not answer within half of it is gone."""

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
"""Largest message a client may send (a subscribe is under 200 bytes); larger closes with 1009."""

_DISCONNECT = object()
"""What :func:`_receive_text` returns once the client has gone or closed."""


async def _receive_text(ws: web.WebSocketResponse) -> str | object | None:
    """The next message's text (binary frames decoded as UTF-8), ``None`` for a frame that
    carries no text, or :data:`_DISCONNECT` once the client closed or the connection failed."""
    message = await ws.receive()
    if message.type is WSMsgType.TEXT:
        return str(message.data)
    if message.type is WSMsgType.BINARY:
        return bytes(message.data).decode("utf-8", errors="replace")
    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return _DISCONNECT
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


async def tutorial_endpoint(request: web.Request, gw: Gateway) -> web.WebSocketResponse:
    """``/client``: the tutorial's protocol, unchanged (see the module docstring)."""
    outbox = Outbox(gw.settings.client_queue_max)
    ws = await accept(request, outbox)
    gw.connections.add(outbox)
    sub: list[CallSubscriber] = []

    async def reader() -> None:
        try:
            sids = await store.active_sids(gw.hub.redis, gw.hub.redis_timeout_s)
        except RedisUnavailable:
            outbox.close(CLOSE_INTERNAL, "redis unavailable", drain=False)
            return
        outbox.put(json.dumps(sids))
        text = await _receive_text(ws)
        if not isinstance(text, str):
            return
        call_sid = text.strip()
        if not _CALL_SID.fullmatch(call_sid):
            log.info("client sent no callSid", extra={"length": len(call_sid)})
            outbox.close(CLOSE_POLICY, "unknown callSid", drain=True)
            return
        try:
            sub.append(await gw.hub.attach_call(call_sid, outbox, since="0", deepgram=True))
        except ClientMessageError:
            log.info("client asked for an unknown call", extra={"call_sid": call_sid[:64]})
            outbox.close(CLOSE_POLICY, "unknown callSid", drain=True)
            return
        except RedisUnavailable:
            outbox.close(CLOSE_INTERNAL, "redis unavailable", drain=False)
            return
        while await _receive_text(ws) is not _DISCONNECT:
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
        for s in sub:
            gw.hub.detach(s)
    return ws


async def json_endpoint(request: web.Request, gw: Gateway) -> web.WebSocketResponse:
    """``/v1/ws``: the JSON protocol (see the module docstring)."""
    outbox = Outbox(gw.settings.client_queue_max)
    ws = await accept(request, outbox)
    gw.connections.add(outbox)
    session = _JsonSession(gw, outbox)
    try:
        await serve_connection(
            ws,
            outbox,
            session.read(ws),
            send_timeout_s=gw.settings.send_timeout_s,
            connections=gw.connections,
        )
    finally:
        session.detach_all()
    return ws


class _JsonSession:
    """The subscriptions and error count of one ``/v1/ws`` connection."""

    def __init__(self, gw: Gateway, outbox: Outbox) -> None:
        self.gw = gw
        self.hub = gw.hub
        self.outbox = outbox
        self.subs: dict[str, CallSubscriber] = {}
        self.watcher: CallsWatcher | None = None

    def detach_all(self) -> None:
        for sub in self.subs.values():
            self.hub.detach(sub)
        self.subs.clear()
        if self.watcher is not None:
            self.hub.detach(self.watcher)

    def _error(self, code: str, message: str, call_sid: str | None = None) -> None:
        self.outbox.put(ErrorEvent(code=code, message=message, call_sid=call_sid).to_json())

    def _ended(self, sub: CallSubscriber) -> None:
        self.hub.detach(sub)
        if self.subs.get(sub.call_sid) is sub:
            del self.subs[sub.call_sid]

    async def read(self, ws: web.WebSocketResponse) -> None:
        errors = 0
        while True:
            text = await _receive_text(ws)
            if text is _DISCONNECT:
                return
            try:
                if not isinstance(text, str):
                    raise ClientMessageError("bad_json", "messages must be JSON objects")
                await self._handle(text)
                errors = 0
            except ClientMessageError as exc:
                errors += 1
                self._error(exc.code, exc.message, getattr(exc, "call_sid", None))
                if errors >= MAX_CONSECUTIVE_ERRORS:
                    self.outbox.close(CLOSE_POLICY, "too many bad messages", drain=True)
                    return
            except RedisUnavailable:
                self._error("unavailable", "Redis is unavailable; try again shortly")

    async def _handle(self, text: str) -> None:
        request = parse_client(text)
        if isinstance(request, HistoryRequest):
            page = await history.search(
                self.hub.redis,
                history.Query.from_request(request),
                retention_s=self.gw.settings.retention_s,
                timeout_s=self.hub.redis_timeout_s,
            )
            self.outbox.put(page.to_json())
            return
        if isinstance(request, ListRequest):
            if self.watcher is None:
                self.watcher = self.hub.attach_watcher(self.outbox)
            else:
                calls = await store.active_calls(self.hub.redis, self.hub.redis_timeout_s)
                self.outbox.put(store.calls_message(calls))
            return
        sid = request.call_sid
        if isinstance(request, SubscribeRequest):
            if sid in self.subs:
                raise _CallError("already_subscribed", "already subscribed to this call", sid)
            if len(self.subs) >= MAX_SUBSCRIPTIONS:
                raise _CallError("too_many_subscriptions", "unsubscribe from a call first", sid)
            greeting = json.dumps({"type": "subscribed", "call_sid": sid})
            try:
                self.subs[sid] = await self.hub.attach_call(
                    sid, self.outbox, since=request.since, greeting=greeting, on_end=self._ended
                )
            except ClientMessageError as exc:
                raise _CallError(exc.code, exc.message, sid) from None
            return
        sub = self.subs.pop(sid, None)
        if sub is None:
            raise _CallError("not_subscribed", "not subscribed to this call", sid)
        self.hub.detach(sub)
        self.outbox.put(json.dumps({"type": "unsubscribed", "call_sid": sid}))


class _CallError(ClientMessageError):
    """A client error about one call (the error event carries its ``call_sid``)."""

    def __init__(self, code: str, message: str, call_sid: str) -> None:
        super().__init__(code, message)
        self.call_sid = call_sid
