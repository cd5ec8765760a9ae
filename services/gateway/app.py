"""The gateway service: a Starlette app (HTTP + two WebSocket protocols) over one :class:`Hub`.

``run(settings, stop=..., bound=...)`` serves until ``stop`` is set, then closes every client
with 1012 (service restart), stops the server and the hub, and logs one summary line. It holds
no module-level state, so several gateways can run in one process.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from services.gateway import rest
from services.gateway.clients import Gateway, json_endpoint, tutorial_endpoint
from services.gateway.connection import Connections
from services.gateway.hub import Hub
from services.gateway.outbox import CLOSE_RESTART
from shared.service import serve_asgi
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
    )


def build_app(gateway: Gateway) -> Starlette:
    """The ASGI app of one gateway instance."""

    async def client_ws(ws: WebSocket) -> None:
        await tutorial_endpoint(ws, gateway)

    async def v1_ws(ws: WebSocket) -> None:
        await json_endpoint(ws, gateway)

    app = Starlette(
        routes=[
            Route("/", rest.index),
            Route("/healthz", rest.healthz),
            Route("/v1/calls", rest.list_calls),
            Route("/v1/calls/{sid}", rest.get_call),
            Route("/v1/calls/{sid}/transcript", rest.get_transcript),
            WebSocketRoute("/client", client_ws),
            WebSocketRoute("/v1/ws", v1_ws),
        ]
    )
    app.state.gateway = gateway
    app.state.index_html = rest.index_html()
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
        OSError: the address cannot be bound.
    """
    hub = make_hub(settings)
    gateway = Gateway(settings=settings, hub=hub, connections=Connections())
    app = build_app(gateway)
    server_stop = asyncio.Event()
    closed = 0
    try:
        async with asyncio.TaskGroup() as tg:
            hub_task = tg.create_task(hub.run(), name="gateway-hub")
            http = tg.create_task(
                serve_asgi(
                    app,
                    host=settings.host,
                    port=settings.port,
                    stop=server_stop,
                    bound=bound,
                    name="gateway",
                ),
                name="gateway-http",
            )
            stopping = tg.create_task(stop.wait(), name="gateway-stop")
            await asyncio.wait({http, stopping}, return_when=asyncio.FIRST_COMPLETED)
            closed = await gateway.connections.close_all(
                CLOSE_RESTART, "service restart", settings.send_timeout_s
            )
            server_stop.set()
            stopping.cancel()
            await http
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
