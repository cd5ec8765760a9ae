"""The gateway's ``/metrics``: connection, fan-out and Redis figures, read at scrape time.

The fan-out keeps counting in plain ints (each :class:`~services.gateway.outbox.Outbox`'s
``sent`` and ``dropped``, the :class:`~services.gateway.connection.Connections` totals, the
hub's ``reconnects`` and ``redis_errors``); :func:`gateway_registry` reads them when scraped,
adding the open connections' outbox counters to those of the connections already closed so the
counters stay monotonic. Nothing runs per message sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from shared.metrics import CollectorRegistry, ScrapeCollector, counter, gauge

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from services.gateway.state import Gateway


def gateway_registry(gateway: Gateway) -> CollectorRegistry:
    """A registry of its own for one gateway instance (see docs/architecture.md, "Metrics")."""
    registry = CollectorRegistry()
    registry.register(ScrapeCollector(lambda: _collect(gateway)))
    return registry


def _collect(gw: Gateway) -> Iterator[Metric]:
    conns, hub = gw.connections, gw.hub
    sent, dropped = conns.sent_closed, conns.dropped_closed
    queued = 0
    for outbox in conns.open_outboxes():
        sent += outbox.sent
        dropped += outbox.dropped
        queued += len(outbox)
    yield from (
        gauge(
            "callscribe_gateway_clients",
            "Client WebSockets connected now (/client and /v1/ws)",
            len(conns),
        ),
        counter("callscribe_gateway_clients_connected", "Client WebSockets accepted", conns.total),
        counter(
            "callscribe_gateway_slow_client_closes",
            "Clients closed with 1013 for reading too slowly (queue full of finals, or a send timeout)",
            conns.slow_closed,
        ),
        counter("callscribe_gateway_messages_sent", "Messages sent to clients", sent),
        counter(
            "callscribe_gateway_interims_dropped",
            "Interim results dropped for slow clients (the slow-client policy's first step)",
            dropped,
        ),
        gauge(
            "callscribe_gateway_client_queue_messages",
            "Messages queued for clients now, summed over clients",
            queued,
        ),
        gauge(
            "callscribe_gateway_subscribed_channels",
            "Redis pub/sub channels this gateway holds (one per watched call, plus call events)",
            hub.subscribed_channels,
        ),
        gauge(
            "callscribe_gateway_redis_up",
            "1 while the hub's pub/sub connection to Redis is up",
            hub.connected.is_set(),
        ),
        counter(
            "callscribe_gateway_redis_reconnects",
            "Times the hub reconnected its pub/sub connection after losing it",
            hub.reconnects,
        ),
        counter(
            "callscribe_gateway_redis_errors",
            "Pub/sub connections lost or refused, and history replays that failed",
            hub.redis_errors,
        ),
    )
