"""The handlers of ``callscribe``'s own tools: ``simulate``, ``watch``, ``token`` and ``demo``.

Each takes the parsed arguments (:func:`callscribe.cli.build_parser`) and returns the exit
status: 0 success, 1 failure, 2 bad arguments, 130 interrupted (SIGINT/SIGTERM, through
:func:`shared.aio.run_until_signal`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable

from shared import aio

EXIT_INTERRUPTED = aio.EXIT_INTERRUPTED


async def until_stopped(work: Awaitable[int], stop: asyncio.Event) -> int:
    """Await ``work`` and return its exit status; if ``stop`` is set first, cancel it and
    return 130. Raises what ``work`` raised, and the caller's own cancellation."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await aio.cancel_and_wait(stopper)
        if not task.done():
            await aio.cancel_and_wait(task)
    return task.result() if not task.cancelled() else EXIT_INTERRUPTED


def cmd_simulate(args: argparse.Namespace) -> int:
    """``callscribe simulate``: run it with the parsed ``args``; the exit status."""
    from callscribe.demo import bundled_recording
    from callscribe.simulate import (
        SimulateError,
        SimulateOptions,
        load_tracks,
        parse_params,
        signature_url,
        simulate,
        webhook_signature_url,
    )

    if args.print_bundled:
        print(bundled_recording())
        return 0
    try:
        tracks = load_tracks(args.audio or [bundled_recording()])
        options = SimulateOptions(
            ingest_url=args.ingest,
            calls=args.calls,
            speed=args.speed,
            loss=args.loss,
            outbound_delay_ms=args.outbound_delay_ms,
            seed=args.seed,
            auth_token=args.auth_token or None,
            signature_url=signature_url(args.public_url) if args.public_url else None,
            webhook_signature_url=(
                webhook_signature_url(args.public_url) if args.public_url else None
            ),
            params=parse_params(args.param),
            open_timeout_s=args.open_timeout_s,
        )
    except SimulateError as exc:
        print(f"callscribe simulate: {exc}", file=sys.stderr)
        return 2

    async def main(stop: asyncio.Event) -> int:
        try:
            return await until_stopped(simulate(tracks, options), stop)
        except SimulateError as exc:
            print(f"callscribe simulate: {exc}", file=sys.stderr)
            return 2

    return aio.run_until_signal(main)


def cmd_watch(args: argparse.Namespace) -> int:
    """``callscribe watch``: run it with the parsed ``args``; the exit status."""
    from callscribe.render import CallRenderer
    from callscribe.watch import watch
    from callscribe.watch_options import WatchOptions, v1_url
    from shared.schema import is_stream_id

    try:
        url = v1_url(args.gateway)
    except ValueError as exc:
        print(f"callscribe watch: --gateway: {exc}", file=sys.stderr)
        return 2
    if args.since is not None and not is_stream_id(args.since):
        print(
            f"callscribe watch: --since: not a history ID (like 1700000000000-0, or 0): "
            f"{args.since!r}",
            file=sys.stderr,
        )
        return 2
    options = WatchOptions(
        url=url,
        call_sid=args.call_sid,
        since=args.since,
        open_timeout_s=args.open_timeout_s,
        reconnects=args.reconnects,
        token=args.token or None,
        reconnect_for_s=args.retry_for_s,
    )
    renderer = CallRenderer(sys.stdout)

    async def main(stop: asyncio.Event) -> int:
        return await until_stopped(watch(options, renderer), stop)

    return aio.run_until_signal(main)


def cmd_token(args: argparse.Namespace) -> int:
    """``callscribe token``: run it with the parsed ``args``; the exit status."""
    from services.gateway.auth import Scope, mint

    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        print("callscribe token: set JWT_SECRET (the gateway's secret) first", file=sys.stderr)
        return 2
    scope = Scope.CALL if args.call else Scope.NUMBERS if args.number else Scope.ALL
    try:
        token = mint(
            secret,
            scope=scope,
            numbers=args.number,
            call_sid=args.call,
            history=args.history,
            ttl_s=args.ttl_s,
            subject=args.subject,
            audience=os.environ.get("JWT_AUDIENCE") or "callscribe",
        )
    except ValueError as exc:
        print(f"callscribe token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``callscribe demo``: run it with the parsed ``args``; the exit status."""
    # settings are read from the environment by each service: set them before any import
    os.environ.setdefault("REDIS_URL", "memory://")
    os.environ["ASR_ENGINE"] = "whisper"
    if not args.speed >= 0:  # also refuses nan
        print(
            "callscribe demo: --speed must not be negative (0 = as fast as possible)",
            file=sys.stderr,
        )
        return 2
    from callscribe.demo import DemoOptions, run_demo

    options = DemoOptions(
        speed=args.speed,
        serve=args.serve,
        ingest_port=args.ingest_port,
        gateway_port=args.gateway_port,
        audio=args.audio,
    )
    from callscribe.pipes import EXIT_BROKEN_PIPE, PipeGuard, silence_stdout

    guard: PipeGuard | None = None

    def demo(stop: asyncio.Event) -> Awaitable[int]:
        nonlocal guard
        guard = PipeGuard(sys.stdout, stop.set)  # head -3 closing the pipe stops the demo
        return run_demo(options, stop, out=guard)  # type: ignore[arg-type]

    status = aio.run_until_signal(demo)
    if guard is not None and guard.broken:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    return status
