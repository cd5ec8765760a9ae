"""``callscribe transcriber``: run a worker, or ``--check`` whether one is alive."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.transcriber.app import run
from services.transcriber.health import check
from services.transcriber.probe import check_key, probe_deepgram
from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.settings import AsrEngineName, TranscriberSettings
from shared.startup import load_settings, run_service

DESCRIPTION = (
    "Run a transcriber worker: claim calls from Redis, transcribe them (Deepgram or the embedded "
    "Whisper engine), publish the results. Settings come from the environment (README, "
    "Configuration)."
)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``; run until SIGTERM/SIGINT (exit 0), or with ``--check`` exit 0 if a worker
    is alive and its speech engine reachable, else 1. A bad setting, or Deepgram without a key
    or with a refused key, exits 2 with one line."""
    parser = argparse.ArgumentParser(prog="callscribe transcriber", description=DESCRIPTION)
    parser.add_argument(
        "--host", default=None, help="address of /metrics and /healthz (default: METRICS_HOST)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port of /metrics and /healthz (default: METRICS_PORT)",
    )
    parser.add_argument(
        "--consumer", default=None, help="consumer name (default: CONSUMER or host-pid)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if this host's worker is alive (fresh health key) and its engine reachable",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(TranscriberSettings)
        if not args.check:
            check_key(settings)
    except ConfigError as exc:
        print(f"callscribe transcriber: {exc}", file=sys.stderr)
        return 2
    if args.consumer:
        settings = settings.model_copy(update={"consumer": args.consumer})
    if args.host is not None:
        settings = settings.model_copy(update={"metrics_host": args.host})
    if args.port is not None:
        settings = settings.model_copy(update={"metrics_port": args.port})
    setup_logging(settings.log_level)
    if args.check:
        ok = asyncio.run(check(settings, args.consumer))
        if not ok:
            print(
                "callscribe transcriber: unhealthy: no fresh health key of this host's worker "
                "(not running, Redis unreachable, or its speech engine unreachable)",
                file=sys.stderr,
            )
        return 0 if ok else 1

    async def main_(stop: asyncio.Event) -> None:
        first = await probe_deepgram(settings) if settings.asr_engine is AsrEngineName.DEEPGRAM else None
        await run(settings, stop=stop, probe=first)

    return run_service(
        "transcriber",
        settings.redis_url,
        main_,
        listen=(settings.metrics_host, settings.metrics_port),
    )


if __name__ == "__main__":
    sys.exit(main())
