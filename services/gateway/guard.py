"""What a stranger's connection must pass before it gets anywhere: Origin, per-address limits.

* ``Origin`` (RFC 6454; browsers send it on every WebSocket handshake, and a page cannot forge
  it): absent (a non-browser client) is allowed; ``null`` (sandboxed pages, ``file:``) never;
  otherwise the gateway's own origin (``Origin`` host equal to ``Host``) or one listed in
  ``ALLOWED_ORIGINS``. Refused handshakes get HTTP 403 before any upgrade, so a foreign page
  learns nothing (https://websockets.readthedocs.io/en/stable/topics/security.html, Origin).
* At most ``GATEWAY_MAX_CONNECTIONS_PER_IP`` open WebSockets per client address (HTTP 429 beyond).
* At most ``HTTP_MAX_REQUESTS_PER_S`` HTTP requests per second per address (burst 2 s worth;
  429 beyond), WebSocket handshakes included.

Behind a reverse proxy every client has the proxy's address: raise the limits there, or
enforce them at the proxy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shared.limits import ConnectionCounter, KeyedBuckets
from shared.schema import ErrorEvent
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)

HTTP_BURST_S = 2.0
"""A client address may send this many seconds' worth of requests at once."""


def origin_allowed(origin: str | None, host: str, allowed: frozenset[str]) -> bool:
    """Whether a WebSocket handshake with this ``Origin`` header may proceed (module docstring).

    ``host`` is the request's ``Host`` header; ``allowed`` holds lower-case
    ``scheme://host[:port]`` strings.
    """
    if origin is None:
        return True
    o = origin.strip().rstrip("/").lower()
    if not o or o == "null":
        return False
    if o in allowed:
        return True
    scheme, sep, hostport = o.partition("://")
    return bool(sep) and scheme in ("http", "https") and hostport == host.strip().lower()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(ErrorEvent(code=code, message=message).model_dump(), status=status)


class Guard:
    """The per-address limits and Origin allow-list of one gateway instance."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.allowed = settings.origins()
        self.connections = ConnectionCounter(settings.max_connections_per_ip)
        self.http = KeyedBuckets(
            settings.http_max_requests_per_s, settings.http_max_requests_per_s * HTTP_BURST_S
        )
        self.origins_refused = 0

    def open_ws(self, request: web.BaseRequest) -> web.Response | None:
        """Check a WebSocket handshake; None = go on (call :meth:`close_ws` when it ends),
        else the HTTP answer that refuses it (403 bad Origin, 429 too many connections)."""
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.host, self.allowed):
            self.origins_refused += 1
            log.warning(
                "websocket origin refused",
                extra={"origin": (origin or "")[:100], "path": request.path},
            )
            return _error(403, "forbidden_origin", "this Origin may not open WebSockets here")
        if not self.connections.acquire(request.remote or "?"):
            log.warning(
                "too many connections from one address",
                extra={"client": request.remote, "limit": self.connections.max_per_key},
            )
            return _error(429, "too_many_connections", "too many connections from your address")
        return None

    def close_ws(self, request: web.BaseRequest) -> None:
        """A WebSocket that :meth:`open_ws` let through has ended."""
        self.connections.release(request.remote or "?")

    def middleware(self) -> Any:
        """aiohttp middleware: per-address HTTP request rate (429 ``rate_limited`` beyond)."""
        http = self.http

        @web.middleware
        async def middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if not http.take(request.remote or "?", asyncio.get_running_loop().time()):
                return _error(429, "rate_limited", "too many requests; slow down")
            return await handler(request)

        return middleware
