"""``callscribe ingest [--host H] [--port P] [--check]``: run the ingest service until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys

from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.settings import IngestSettings
from shared.startup import http_check, load_settings, run_service

from .admission import check_settings
from .app import run

DESCRIPTION = (
    "Twilio Media Streams in (/twilio, /twiml), mixed stereo frames to Redis out. "
    "Settings come from the environment (README, Configuration)."
)


def main(argv: list[str] | None = None) -> int:
    """Parse ``--host``/``--port`` (defaults from the environment), serve, return the exit status.

    ``--check``: exit 0 when ingest at ``host:port`` answers ``/healthz`` with 200 (it can
    write to Redis), else 1 with one line saying why. A bad setting exits 2 with one line.
    """
    try:
        settings = load_settings(IngestSettings)
    except ConfigError as exc:
        print(f"callscribe ingest: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="callscribe ingest", description=DESCRIPTION)
    parser.add_argument("--host", default=settings.host, help=f"listen address ({settings.host})")
    parser.add_argument("--port", type=int, default=settings.port, help=f"port ({settings.port})")
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if ingest on --host/--port is healthy"
    )
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    setup_logging(settings.log_level)
    if args.check:
        ok, why = asyncio.run(http_check(settings.host, settings.port))
        if not ok:
            print(f"callscribe ingest: unhealthy: {why}", file=sys.stderr)
        return 0 if ok else 1
    try:
        check_settings(settings, warn=False)  # refuse to start unprotected: one line, exit 2
    except ConfigError as exc:
        print(f"callscribe ingest: {exc}", file=sys.stderr)
        return 2
    return run_service(
        "ingest",
        settings.redis_url,
        lambda stop: run(settings, stop=stop),
        listen=(settings.host, settings.port),
    )


if __name__ == "__main__":
    sys.exit(main())
