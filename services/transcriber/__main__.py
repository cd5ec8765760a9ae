"""``python -m services.transcriber``: run a worker, or ``--check`` whether one is alive."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.transcriber.app import run
from services.transcriber.health import check
from shared.logs import setup_logging
from shared.service import run_until_signal
from shared.settings import TranscriberSettings


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``; run until SIGTERM/SIGINT (exit 0), or with ``--check`` exit 0 if a worker is alive, else 1."""
    parser = argparse.ArgumentParser(prog="callscribe transcriber", description=__doc__)
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
        "--check", action="store_true", help="exit 0 if a worker's health key is fresh"
    )
    args = parser.parse_args(argv)
    settings = TranscriberSettings()
    if args.consumer:
        settings = settings.model_copy(update={"consumer": args.consumer})
    if args.host is not None:
        settings = settings.model_copy(update={"metrics_host": args.host})
    if args.port is not None:
        settings = settings.model_copy(update={"metrics_port": args.port})
    setup_logging(settings.log_level)
    if args.check:
        return 0 if asyncio.run(check(settings, args.consumer)) else 1
    return run_until_signal(lambda stop: run(settings, stop=stop))


if __name__ == "__main__":
    sys.exit(main())
