"""Running a service: signals, an aiohttp server that shares the loop, and one stop event.

Every service exposes ``async def run(settings, *, stop, bound=None)`` in its ``app.py``: it
serves until ``stop`` is set, then shuts down within its grace period. ``bound`` (when given)
receives the TCP port once listening, so tests can pass port 0. ``__main__`` wires SIGTERM and
SIGINT to ``stop`` through :func:`run_until_signal`; ``callscribe demo`` runs several ``run``
coroutines under one TaskGroup with one shared ``stop``.

HTTP and WebSockets are served by aiohttp (https://docs.aiohttp.org/en/stable/web_advanced.html,
"Application runners"): one port for both, a C HTTP parser and WebSocket reader. Measured on the
2-core machine, 200 connections each sending Twilio's 100 messages a second, a bare server that
parses each message spent 16 µs of CPU per message on aiohttp against 22 µs on ``websockets``
and 40 µs on Starlette/uvicorn (see docs/architecture.md, "Performance").
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from shared import aio

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 5.0
"""How long a stopping server waits for open HTTP requests, s."""


@asynccontextmanager
async def serving(
    app: web.Application,
    *,
    host: str,
    port: int,
    bound: asyncio.Future[int] | None = None,
    name: str = "http",
) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` for the body of the ``async with``; yields the port.

    ``port`` 0 picks a free port, also reported in ``bound``. On exit the listener closes and
    open requests get :data:`SHUTDOWN_TIMEOUT_S`; close long-lived WebSockets before leaving
    the block (each service does, with the close code it owes its peers).

    Raises:
        OSError: the address cannot be bound (``bound`` gets the same exception).
    """
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            if bound is not None and not bound.done():
                bound.set_exception(exc)
                bound.exception()  # retrieved: the caller gets it raised here
            raise
        actual = site.port
        log.info("listening", extra={"service": name, "host": host, "port": actual})
        if bound is not None and not bound.done():
            bound.set_result(actual)
        yield actual
    finally:
        await runner.cleanup()


def install_fast_loop() -> bool:
    """Use uvloop for new event loops when it is installed (about a quarter less CPU per
    WebSocket message, measured); returns whether it is in use."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


GC_THRESHOLDS = (7_000, 10, 10)
"""Allocations between young-generation collections (CPython's default is 700), and the older
generations' ratios (the defaults).

Every Twilio message allocates a few short-lived dicts and strings, so with the default the
young generation was collected hundreds of times a second under load. Ten times the default
plus freezing what exists at start-up (https://docs.python.org/3/library/gc.html#gc.freeze)
cuts that, while memory still comes back after calls end: with (50 000, 20, 100) the gateway's
RSS ended 15 % above idle after 1,000 short calls (benchmarks/load.py --calls 1000 --duration 2),
with these within 10 %."""


def tune_gc() -> None:
    """Apply :data:`GC_THRESHOLDS` and freeze every object alive now (modules, settings)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run a service's ``main(stop)`` on uvloop (when installed) with :func:`tune_gc`, under
    :func:`shared.aio.run_until_signal`: SIGTERM/SIGINT set ``stop``, the next one stops at once.

    Returns the process exit status: 0 after a clean stop, 130 when a second signal cut it short.
    """

    async def service(stop: asyncio.Event) -> int:
        await main(stop)
        return 0

    install_fast_loop()
    tune_gc()
    return aio.run_until_signal(service)
