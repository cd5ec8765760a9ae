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
  connection stays open until :data:`MAX_BAD_MESSAGES` within :data:`BAD_MESSAGE_WINDOW_S`,
  then closes with 1008.

Both endpoints first pass :class:`~services.gateway.guard.Guard` (Origin, connections per
address: HTTP 403/429 before the upgrade), then authenticate (:mod:`services.gateway.auth`:
an invalid token gets the handshake and an immediate close 1008 ``unauthorized: …``, nothing
else), and every call list, subscription and pushed call event is cut to the token's scope.
The connection is closed with 1008 when its token expires, and after :data:`~shared.settings.
GatewaySettings.client_idle_s` of silence while it follows nothing.

Over 300 lines, not split yet: both client protocols share the accept, authentication and limit code
above them; the seam is one module per protocol (issue 7).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from websockets.frames import CloseCode

from services.gateway import history, store
from services.gateway.auth import Authenticator, Grant, presented_token
from services.gateway.connection import Connections, serve_connection
from services.gateway.guard import Guard
from services.gateway.hub import Hub
from services.gateway.outbox import DirectWriter, Outbox
from services.gateway.subscribers import CallSubscriber, CallsWatcher
from shared.errors import ClientMessageError, RedisUnavailable, Unauthorized
from shared.limits import TokenBucket
from shared.schema import (
    CALL_SID_RE,
    CallMeta,
    ErrorEvent,
    HistoryRequest,
    ListRequest,
    SubscribeRequest,
    parse_client,
)
from shared.settings import GatewaySettings

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


@dataclass
class Gateway:
    """One gateway instance's state: its settings, hub, open connections, authenticator and
    per-address guard (the last two built from ``settings`` unless given)."""

    settings: GatewaySettings
    hub: Hub
    connections: Connections
    auth: Authenticator = field(default=None)  # type: ignore[assignment]
    guard: Guard = field(default=None)  # type: ignore[assignment]
    refused_tokens: int = 0

    def __post_init__(self) -> None:
        if self.auth is None:
            self.auth = Authenticator(self.settings)
        if self.guard is None:
            self.guard = Guard(self.settings)

    async def visible(self, grant: Grant, call_sid: str) -> bool:
        """Whether ``grant`` may see the call (reads its metadata only when the scope needs it).

        Raises RedisUnavailable.
        """
        by_sid = grant.sees_sid(call_sid)
        if by_sid is False:
            return False
        if by_sid and grant.history:
            return True
        meta = await store.call_meta(self.hub.redis, call_sid, self.hub.redis_timeout_s)
        return meta is not None and grant.sees(meta)

    async def visible_calls(self, grant: Grant) -> list[CallMeta]:
        """The active calls ``grant`` may see. Raises RedisUnavailable."""
        calls = await store.active_calls(self.hub.redis, self.hub.redis_timeout_s)
        return calls if grant.all_calls else grant.filter(calls)


HEARTBEAT_S = 20.0
"""Ping interval of client WebSockets; a peer that does not answer within half of it is gone."""

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
"""Largest message a client may send (a subscribe is under 200 bytes); larger closes with 1009."""

_DISCONNECT = object()
"""What :func:`_receive_text` returns once the client has gone or closed."""

_IDLE = object()
"""What :func:`_receive_text` returns when nothing arrived within its timeout."""


async def _receive_text(
    ws: web.WebSocketResponse, timeout_s: float | None = None
) -> str | object | None:
    """The next message's text (binary frames decoded as UTF-8), ``None`` for a frame that
    carries no text, :data:`_IDLE` when nothing came within ``timeout_s``, or
    :data:`_DISCONNECT` once the client closed or the connection failed."""
    try:
        message = await ws.receive(timeout=timeout_s)
    except TimeoutError:
        return _IDLE
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


def _outbox(gw: Gateway) -> Outbox:
    return Outbox(gw.settings.client_queue_max, gw.settings.client_queue_max_bytes)


async def _authenticate(
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


def _expire(outbox: Outbox, grant: Grant) -> asyncio.TimerHandle | None:
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


async def tutorial_endpoint(request: web.Request, gw: Gateway) -> web.StreamResponse:
    """``/client``: the tutorial's protocol, unchanged (see the module docstring)."""
    return await _guarded(request, gw, _tutorial)


async def _guarded(
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


async def _tutorial(request: web.Request, gw: Gateway) -> web.WebSocketResponse:
    outbox = _outbox(gw)
    ws, grant = await _authenticate(request, gw, outbox)
    if grant is None:
        return ws
    gw.connections.add(outbox)
    sub: list[CallSubscriber] = []
    expiry = _expire(outbox, grant)

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
        text = await _receive_text(ws, gw.settings.client_idle_s)
        if text is _IDLE:
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
        if expiry is not None:
            expiry.cancel()
        for s in sub:
            gw.hub.detach(s)
    return ws


async def json_endpoint(request: web.Request, gw: Gateway) -> web.StreamResponse:
    """``/v1/ws``: the JSON protocol (see the module docstring)."""
    return await _guarded(request, gw, _json)


async def _json(request: web.Request, gw: Gateway) -> web.WebSocketResponse:
    outbox = _outbox(gw)
    ws, grant = await _authenticate(request, gw, outbox)
    if grant is None:
        return ws
    gw.connections.add(outbox)
    session = _JsonSession(gw, outbox, grant)
    expiry = _expire(outbox, grant)
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
            text = await _receive_text(ws, settings.client_idle_s)
            if text is _DISCONNECT:
                return
            now = loop.time()
            if text is _IDLE:
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
            )
            page.calls = [c for c in page.calls if grant.sees(c)]  # the token's scope
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
            greeting = json.dumps({"type": "subscribed", "call_sid": sid})
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
        self.outbox.put(json.dumps({"type": "unsubscribed", "call_sid": sid}))


class _CallError(ClientMessageError):
    """A client error about one call (the error event carries its ``call_sid``)."""

    def __init__(self, code: str, message: str, call_sid: str) -> None:
        super().__init__(code, message)
        self.call_sid = call_sid
