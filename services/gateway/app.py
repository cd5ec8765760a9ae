"""The gateway service: an aiohttp app (HTTP + two WebSocket protocols) over one :class:`Hub`.

``run(settings, stop=..., bound=...)`` serves until ``stop`` is set, then closes every client
with 1012 (service restart), stops the server and the hub, and logs one summary line. It holds
no module-level state, so several gateways can run in one process.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from websockets.frames import CloseCode

from services.gateway import rest
from services.gateway.auth import Authenticator, auth_middleware
from services.gateway.connection import Connections
from services.gateway.hub import Hub
from services.gateway.json_ws import json_endpoint
from services.gateway.metrics import gateway_registry
from services.gateway.state import Gateway
from services.gateway.tutorial_ws import tutorial_endpoint
from shared.metrics import metrics_handler
from shared.service import serving
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)


def make_hub(settings: GatewaySettings) -> Hub:
    """The hub for ``settings`` (one per gateway process)."""
    return Hub(
        settings.redis_url,
        socket_timeout_s=settings.redis_socket_timeout_s,
        client_queue_max=settings.client_queue_max,
        redis_timeout_s=settings.redis_timeout_s,
        reconnect_min_s=settings.reconnect_min_s,
        reconnect_max_s=settings.reconnect_max_s,
        ping_interval_s=settings.ping_interval_s,
        max_connections=settings.redis_max_connections,
    )


def build_app(gateway: Gateway) -> web.Application:
    """The web app of one gateway instance (``GET /metrics`` from a registry of its own)."""

    async def client_ws(request: web.Request) -> web.StreamResponse:
        return await tutorial_endpoint(request, gateway)

    async def v1_ws(request: web.Request) -> web.StreamResponse:
        return await json_endpoint(request, gateway)

    # the rate limit first (it also covers refused tokens), then authentication
    app = web.Application(middlewares=[gateway.guard.middleware(), auth_middleware(gateway.auth)])
    app[rest.GATEWAY] = gateway
    app[rest.INDEX_HTML] = rest.index_html()
    app.router.add_get("/", rest.index)
    app.router.add_get("/healthz", rest.healthz)
    app.router.add_get("/v1/calls", rest.list_calls)
    app.router.add_get("/v1/calls/{sid}", rest.get_call)
    app.router.add_get("/v1/calls/{sid}/transcript", rest.get_transcript)
    app.router.add_get("/client", client_ws)
    app.router.add_get("/v1/ws", v1_ws)
    app.router.add_get("/metrics", metrics_handler(gateway_registry(gateway)))
    return app


async def run(
    settings: GatewaySettings,
    *,
    stop: asyncio.Event,
    bound: asyncio.Future[int] | None = None,
) -> None:
    """Serve the gateway on ``settings.host:settings.port`` until ``stop`` is set.

    ``bound`` receives the listening port (useful with port 0).

    Raises:
        ConfigError: authentication is on (the default) without ``JWT_SECRET`` or ``JWKS_URL``.
        OSError: the address cannot be bound.
    """
    auth = Authenticator(settings)  # first: refuse to start before anything listens
    hub = make_hub(settings)
    gateway = Gateway(settings=settings, hub=hub, connections=Connections(), auth=auth)
    app = build_app(gateway)
    closed = 0
    try:
        async with asyncio.TaskGroup() as tg:
            hub_task = tg.create_task(hub.run(), name="gateway-hub")
            async with serving(
                app, host=settings.host, port=settings.port, bound=bound, name="gateway"
            ):
                await stop.wait()
                closed = await gateway.connections.close_all(
                    CloseCode.SERVICE_RESTART, "service restart", settings.send_timeout_s
                )
            hub_task.cancel()
    except* OSError as group:
        raise group.exceptions[0] from None
    log.info(
        "gateway stopped",
        extra={
            "clients_closed": closed,
            "clients_total": gateway.connections.total,
            "slow_clients_closed": gateway.connections.slow_closed,
            "redis_reconnects": hub.reconnects,
        },
    )
