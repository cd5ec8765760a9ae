"""HTTP routes: ``/v1/calls``, ``/v1/calls/{sid}``, ``/v1/calls/{sid}/transcript``, ``/healthz``, ``/``.

JSON in, JSON out (docs/protocol.md, "REST"), except transcript exports. Errors are
``ErrorEvent`` JSON bodies: 404 ``unknown_call``, 400 ``bad_request`` (a ``since`` that is not
a stream ID, a bad filter or format), 503 ``unavailable`` when Redis does not answer within the
hub's ``redis_timeout_s``; 401 ``unauthorized`` comes from
:func:`services.gateway.auth.auth_middleware`, which leaves the token's
:class:`~services.gateway.auth.Grant` in ``request[GRANT]``. A call outside the grant's scope
is a 404 like a call that does not exist; a transcript needs ``history`` (403 ``forbidden``
otherwise); history and search pages show only the calls the grant may see.
"""

from __future__ import annotations

import time
from importlib import resources

from aiohttp import web
from pydantic import ValidationError

from services.gateway import export, history, store
from services.gateway.auth import GRANT, Grant
from services.gateway.history import Query
from services.gateway.state import Gateway
from shared.errors import ClientMessageError, RedisUnavailable
from shared.history import summarize
from shared.redisconn import stream_id_tuple
from shared.schema import (
    CALL_SID_RE,
    CallMeta,
    ErrorEvent,
    HistoryRequest,
    TranscriptEvent,
    is_stream_id,
)

MAX_TRANSCRIPT_ENTRIES = 10_000
"""At most this many finals per ``/transcript`` answer (the stream's default MAXLEN)."""



GATEWAY = web.AppKey("gateway", Gateway)
"""Where the app keeps its :class:`Gateway`."""

INDEX_HTML = web.AppKey("index_html", str)
"""Where the app keeps the web page's text."""


def _json(body: object, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(ErrorEvent(code=code, message=message).model_dump(), status)


def _unavailable() -> web.Response:
    return _error(503, "unavailable", "Redis is unavailable; try again shortly")


def _grant(request: web.Request) -> Grant:
    """The request's grant (set by the auth middleware; a missing one fails closed)."""
    grant = request.get(GRANT)
    if not isinstance(grant, Grant):
        raise web.HTTPUnauthorized(text="no grant")
    return grant


def index_html() -> str:
    """The web page (``static/index.html``), read from the package."""
    return resources.files("services.gateway").joinpath("static/index.html").read_text("utf-8")


HISTORY_PARAMS = frozenset({"status", "number", "from", "to", "q", "cursor", "limit"})
"""Query parameters that make ``GET /v1/calls`` a history query (a ``history_page`` object)."""


async def list_calls(request: web.Request) -> web.Response:
    """``GET /v1/calls``: the active calls' metadata, a JSON list (unchanged); with any of
    :data:`HISTORY_PARAMS`: a ``history_page`` of recent calls, live and ended, filtered
    (:mod:`services.gateway.history`). Auth scope when it lands: reading calls."""
    gw = request.app[GATEWAY]
    if HISTORY_PARAMS & set(request.query):
        return await _history(request)
    try:
        calls = await gw.visible_calls(_grant(request))
    except RedisUnavailable:
        return _unavailable()
    return _json([c.model_dump(mode="json", by_alias=True) for c in calls])


async def get_call(request: web.Request) -> web.Response:
    """``GET /v1/calls/{sid}``: one call's metadata, 404 when unknown."""
    gw = request.app[GATEWAY]
    sid = request.match_info["sid"]
    if not CALL_SID_RE.match(sid):
        return _error(404, "unknown_call", "no such call")
    try:
        meta = await store.call_meta(gw.hub.redis, sid, gw.hub.redis_timeout_s)
    except RedisUnavailable:
        return _unavailable()
    if meta is None or not _grant(request).sees(meta):
        return _error(404, "unknown_call", "no such call")
    return _json(meta.model_dump(mode="json", by_alias=True))


async def _history(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    params = {k: v for k, v in request.query.items() if k in HISTORY_PARAMS and v != ""}
    try:
        req = HistoryRequest.model_validate({"type": "history", **params})
        query = Query.from_request(req)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _error(400, "bad_request", f"{where}: {first['msg']}")
    except ClientMessageError as exc:
        return _error(400, exc.code, exc.message)
    grant = _grant(request)
    if req.q and not grant.history:
        return _error(403, "forbidden", "searching transcripts needs a token with history")
    try:
        page = await history.search(
            gw.hub.redis,
            query,
            retention_s=gw.settings.retention_s,
            timeout_s=gw.hub.redis_timeout_s,
            visible=grant.sees,  # the token's scope
        )
    except RedisUnavailable:
        return _unavailable()
    return _json(page.model_dump(mode="json", by_alias=True))


async def _finals(gw: Gateway, sid: str, since: str) -> list[TranscriptEvent]:
    """The call's finals after ``since``, at most :data:`MAX_TRANSCRIPT_ENTRIES`. Raises
    RedisUnavailable."""
    r, t = gw.hub.redis, gw.hub.redis_timeout_s
    events: list[TranscriptEvent] = []
    cursor = stream_id_tuple(since)
    while len(events) < MAX_TRANSCRIPT_ENTRIES:
        page = await store.history_page(r, sid, cursor, t)
        for entry_id, fields in page:
            cursor = stream_id_tuple(entry_id)
            try:
                events.append(TranscriptEvent.from_history(entry_id, fields))
            except ValueError:
                continue
        if len(page) < store.HISTORY_PAGE:
            break
    return events


async def get_transcript(request: web.Request) -> web.Response:
    """``GET /v1/calls/{sid}/transcript[?since=ID][&format=txt|json|vtt|srt]``: finals after
    ``since`` (default all), each a ``transcript`` event with its ``id``; with ``format``, the
    whole transcript as a download (:mod:`services.gateway.export`). 404 when the call is
    unknown. Auth scope when it lands: reading transcripts."""
    gw = request.app[GATEWAY]
    sid = request.match_info["sid"]
    since = request.query.get("since") or "0"
    fmt = request.query.get("format")
    if not is_stream_id(since) or since == "$":
        return _error(400, "bad_request", "since must be a stream ID like 1700000000000-0")
    if fmt is not None and fmt not in export.FORMATS:
        return _error(400, "bad_request", f"format must be one of {', '.join(export.FORMATS)}")
    if not CALL_SID_RE.match(sid):
        return _error(404, "unknown_call", "no such call")
    r, t = gw.hub.redis, gw.hub.redis_timeout_s
    grant = _grant(request)
    try:
        known, _, _ = await store.call_info(r, sid, t)
        if not known or not await gw.visible(grant, sid):
            return _error(404, "unknown_call", "no such call")
        if not grant.history:
            return _error(403, "forbidden", "this token does not include history")
        events = await _finals(gw, sid, since)
        if fmt is None:
            return _json([e.model_dump() for e in events])
        meta = await store.call_meta(r, sid, t) or CallMeta(call_sid=sid, started_at=0.0)
    except RedisUnavailable:
        return _unavailable()
    summary = summarize(meta, len(events), time.time())
    return web.Response(
        text=export.render(fmt, summary, events),
        content_type=export.FORMATS[fmt].split(";")[0],
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{sid}.{fmt}"'},
    )


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 ``{"status": "ok", "redis": true, ...}``, 503 when Redis is down."""
    gw = request.app[GATEWAY]
    redis_ok = True
    try:
        await store.partitions_reachable(gw.hub.redis, gw.hub.redis_timeout_s)
    except RedisUnavailable:
        redis_ok = False
    body = {
        "status": "ok" if redis_ok else "unavailable",
        "redis": redis_ok,
        "pubsub": gw.hub.connected.is_set(),
        "clients": len(gw.connections),
        "channels": gw.hub.subscribed_channels,
        "slow_clients_closed": gw.connections.slow_closed,
    }
    return _json(body, 200 if redis_ok else 503)


async def index(request: web.Request) -> web.Response:
    """``GET /``: the web page that lists live calls and shows one."""
    return web.Response(text=request.app[INDEX_HTML], content_type="text/html")
