"""Reading a service's ``/metrics`` in tests: scrape, parse with prometheus_client, wait for a value."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

POLL_S = 0.02
"""How often :func:`wait_metric` scrapes again (a scrape has no event to await), s."""


async def scrape(url: str) -> dict[str, float]:
    """GET ``url`` (a ``/metrics`` endpoint); every unlabelled sample by name, labelled ones as
    ``name{k=v,...}``. Fails when the body does not parse as the Prometheus text format."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        resp = await client.get(url)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def wait_metric(
    url: str, name: str, ok: Callable[[float], bool], timeout_s: float = 10.0
) -> dict[str, float]:
    """Scrape ``url`` until sample ``name`` satisfies ``ok``; the samples then. Times out after
    ``timeout_s`` with the last value in the message."""
    last: float | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                samples = await scrape(url)
                last = samples.get(name)
                if last is not None and ok(last):
                    return samples
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"{name} never satisfied the condition; last value {last}") from None
