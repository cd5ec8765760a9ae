"""``/v1/ws``: callscribe's JSON client protocol (docs/protocol.md, "WebSocket /v1/ws").

* ``{"type": "list"}`` → ``{"type": "calls", "calls": [CallMeta…]}``, then ``call_started`` /
  ``call_updated`` (``queued`` ↔ ``live``) / ``call_ended`` pushed as they happen (a repeated
  ``list`` sends a fresh snapshot).
* ``{"type": "subscribe", "call_sid", "since"}`` → ``{"type": "subscribed", "call_sid"}``, the
  finals after ``since`` (``"0"`` = all, null = none), then live events, ``end`` when the call is
  over (at once after the replay if it already was). Several calls per connection.
* ``{"type": "unsubscribe", "call_sid"}`` → ``{"type": "unsubscribed", "call_sid"}``.
* Errors are ``error`` events (``bad_json``, ``bad_request``, ``unknown_call``,
  ``already_subscribed``, ``not_subscribed``, ``too_many_subscriptions``, ``unavailable``); the
  connection stays open until :data:`MAX_BAD_MESSAGES` within :data:`BAD_MESSAGE_WINDOW_S`,
  then closes with 1008.

Every call list, subscription and pushed call event is cut to the token's scope; a connection
that follows nothing is closed after :data:`~shared.settings.GatewaySettings.client_idle_s` of
silence. See :mod:`services.gateway.sockets` for the handshake, authentication and limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from aiohttp import web
from websockets.frames import CloseCode

from services.gateway import history, store
from services.gateway.auth import Grant
from services.gateway.connection import serve_connection
from services.gateway.outbox import Outbox
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
from services.gateway.subscribers import CallSubscriber, CallsWatcher
from shared.errors import ClientMessageError, RedisUnavailable
from shared.limits import TokenBucket
from shared.schema import (
    ErrorEvent,
    HistoryRequest,
    ListRequest,
    Subscribed,
    SubscribeRequest,
    Unsubscribed,
    parse_client,
)

log = logging.getLogger(__name__)

MAX_BAD_MESSAGES = 10
"""Bad ``/v1/ws`` messages within :data:`BAD_MESSAGE_WINDOW_S` that close the connection (1008);
good messages in between do not reset the count."""

BAD_MESSAGE_WINDOW_S = 60.0
"""The sliding window over which bad messages are counted, s."""

MESSAGE_BURST_S = 5.0
"""A ``/v1/ws`` client may send ``CLIENT_MAX_MSGS_PER_S`` × this many messages at once."""

MAX_SUBSCRIPTIONS = 100
"""Calls one ``/v1/ws`` connection may follow at once."""


async def json_endpoint(request: web.Request, gw: Gateway) -> web.StreamResponse:
    """``/v1/ws``: the JSON protocol (see the module docstring)."""
    return await guarded(request, gw, _json)


async def _json(request: web.Request, gw: Gateway) -> web.WebSocketResponse:
    outbox = new_outbox(gw)
    ws, grant = await authenticate(request, gw, outbox)
    if grant is None:
        return ws
    gw.connections.add(outbox)
    session = _JsonSession(gw, outbox, grant)
    expiry = close_on_expiry(outbox, grant)
    try:
        await serve_connection(
            ws,
            outbox,
            session.read(ws),
            send_timeout_s=gw.settings.send_timeout_s,
            connections=gw.connections,
        )
    finally:
        if expiry is not None:
            expiry.cancel()
        session.detach_all()
    return ws


class _JsonSession:
    """The subscriptions, grant and bad-message window of one ``/v1/ws`` connection."""

    def __init__(self, gw: Gateway, outbox: Outbox, grant: Grant) -> None:
        self.gw = gw
        self.hub = gw.hub
        self.outbox = outbox
        self.grant = grant
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
        settings = self.gw.settings
        loop = asyncio.get_running_loop()
        bad: deque[float] = deque()
        rate = settings.client_max_msgs_per_s
        bucket = TokenBucket(rate, max(1.0, rate * MESSAGE_BURST_S), loop.time())
        while True:
            text = await receive_text(ws, settings.client_idle_s)
            if text is DISCONNECT:
                return
            now = loop.time()
            if text is IDLE:
                if not self.subs and self.watcher is None:
                    self.outbox.close(CloseCode.POLICY_VIOLATION, "idle", drain=False)
                    return
                continue
            if not bucket.take(now):
                log.info("client sends too fast", extra={"limit_per_s": rate})
                self.outbox.close(CloseCode.POLICY_VIOLATION, "too many messages", drain=False)
                return
            try:
                if not isinstance(text, str):
                    raise ClientMessageError("bad_json", "messages must be JSON objects")
                await self._handle(text)
            except ClientMessageError as exc:
                bad.append(now)
                while bad[0] < now - BAD_MESSAGE_WINDOW_S:
                    bad.popleft()
                self._error(exc.code, exc.message, getattr(exc, "call_sid", None))
                if len(bad) >= MAX_BAD_MESSAGES:
                    self.outbox.close(
                        CloseCode.POLICY_VIOLATION, "too many bad messages", drain=True
                    )
                    return
            except RedisUnavailable:
                self._error("unavailable", "Redis is unavailable; try again shortly")

    async def _handle(self, text: str) -> None:
        request = parse_client(text)
        grant = self.grant
        if isinstance(request, HistoryRequest):
            if request.q and not grant.history:
                raise ClientMessageError("forbidden", "searching transcripts needs history")
            page = await history.search(
                self.hub.redis,
                history.Query.from_request(request),
                retention_s=self.gw.settings.retention_s,
                timeout_s=self.hub.redis_timeout_s,
                visible=grant.sees,  # the token's scope
            )
            self.outbox.put(page.to_json())
            return
        if isinstance(request, ListRequest):
            if self.watcher is None:
                keep = None if grant.all_calls else grant.sees
                self.watcher = self.hub.attach_watcher(self.outbox, keep=keep)
            else:
                self.outbox.put(store.calls_message(await self.gw.visible_calls(grant)))
            return
        sid = request.call_sid
        if isinstance(request, SubscribeRequest):
            if sid in self.subs:
                raise _CallError("already_subscribed", "already subscribed to this call", sid)
            if len(self.subs) >= MAX_SUBSCRIPTIONS:
                raise _CallError("too_many_subscriptions", "unsubscribe from a call first", sid)
            if not await self.gw.visible(grant, sid):
                raise _CallError("unknown_call", "no such call", sid)
            greeting = Subscribed(call_sid=sid).to_json()
            since = request.since if grant.history else None
            try:
                self.subs[sid] = await self.hub.attach_call(
                    sid, self.outbox, since=since, greeting=greeting, on_end=self._ended
                )
            except ClientMessageError as exc:
                raise _CallError(exc.code, exc.message, sid) from None
            return
        sub = self.subs.pop(sid, None)
        if sub is None:
            raise _CallError("not_subscribed", "not subscribed to this call", sid)
        self.hub.detach(sub)
        self.outbox.put(Unsubscribed(call_sid=sid).to_json())


class _CallError(ClientMessageError):
    """A client error about one call (the error event carries its ``call_sid``)."""

    def __init__(self, code: str, message: str, call_sid: str) -> None:
        super().__init__(code, message)
        self.call_sid = call_sid
