"""Prometheus metrics of a service: one registry per service instance, figures read at scrape time.

Every service serves ``GET /metrics`` in the Prometheus text exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/) from its own
:class:`prometheus_client.CollectorRegistry`, never the library's global one, so that
``callscribe demo`` can run the three services (or several of one) in one process.

Cost: the hot paths (ingest's 100 Twilio messages per call-second, the gateway's fan-out) only
bump the plain ``int`` attributes they already keep (``Publisher.written_frames``,
``Outbox.sent``, …). A :class:`ScrapeCollector` turns them into metric families when Prometheus
scrapes, so a scrape costs O(open connections) and a message costs nothing more. Histograms
(observed a few times per call-second) are ordinary ``prometheus_client`` metrics registered
on the same registry.

Names follow https://prometheus.io/docs/practices/naming/: ``callscribe_<service>_<what>``,
base units in the name (``_seconds``, ``_frames``), ``_total`` on counters (added by
:class:`~prometheus_client.core.CounterMetricFamily`). docs/architecture.md, "Metrics", lists
them and the trouble each one shows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CollectorRegistry",
    "ScrapeCollector",
    "counter",
    "gauge",
    "metrics_handler",
]


class ScrapeCollector(Collector):
    """A collector whose families come from ``collect_fn``, called once per scrape.

    ``collect_fn`` must not block or await: it reads counters the service keeps anyway.
    """

    def __init__(self, collect_fn: Callable[[], Iterable[Metric]]) -> None:
        self._collect_fn = collect_fn

    def collect(self) -> Iterable[Metric]:
        """The current families (called by the registry at each scrape)."""
        return self._collect_fn()


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter family with one unlabelled sample; ``name`` without ``_total`` (it is added)."""
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """A gauge family with one unlabelled sample."""
    return GaugeMetricFamily(name, documentation, value=value)


def metrics_handler(
    registry: CollectorRegistry,
    before: Callable[[], Awaitable[None]] | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for ``GET /metrics`` that renders ``registry`` in the text format.

    ``before`` (optional) is awaited first, to refresh a figure that needs I/O; it must bound
    its own time (the scrape waits for it).
    """

    async def handler(request: web.Request) -> web.Response:
        if before is not None:
            await before()
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return handler
