"""Running a service: signals, an ASGI server that shares the loop, and one stop event.

Every service exposes ``async def run(settings, *, stop, bound=None)`` in its ``app.py``: it
serves until ``stop`` is set, then shuts down within its grace period. ``bound`` (when given)
receives the TCP port once listening, so tests can pass port 0. ``__main__`` wires SIGTERM and
SIGINT to ``stop`` through :func:`run_until_signal`; ``callscribe demo`` runs several ``run``
coroutines under one TaskGroup with one shared ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


class _LoopServer(uvicorn.Server):
    """A uvicorn server that leaves signals to us, so several can share one process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_asgi(
    app: Any,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    bound: asyncio.Future[int] | None = None,
    name: str = "http",
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set.

    WebSockets use the ``websockets`` sans-I/O protocol; on shutdown uvicorn closes open
    WebSockets with 1012 (service restart). ``port`` 0 picks a free port, reported in ``bound``.

    Raises:
        OSError: the address cannot be bound (``bound`` gets the same exception).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_max_size=1 << 20,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _LoopServer(config)
    task = asyncio.create_task(server.serve(), name=f"{name}-uvicorn")
    try:
        while not server.started:
            if task.done():
                exc = task.exception() or OSError(f"{name}: server exited before it started")
                if bound is not None and not bound.done():
                    bound.set_exception(exc)
                raise exc
            await asyncio.sleep(0.01)
        actual = server.servers[0].sockets[0].getsockname()[1]
        log.info("listening", extra={"service": name, "host": host, "port": actual})
        if bound is not None and not bound.done():
            bound.set_result(actual)
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``main(stop)`` on a new loop; SIGTERM/SIGINT set ``stop``; a second one exits at once.

    Returns the process exit status (0 after a clean stop).
    """

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        hits = 0

        def on_signal(signame: str) -> None:
            nonlocal hits
            hits += 1
            log.info("signal", extra={"signal": signame, "count": hits})
            if hits > 1:
                raise SystemExit(130)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        await main(stop)
        return 0

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        return 130
