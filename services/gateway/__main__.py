"""``callscribe gateway [--host H] [--port P] [--check]``: run the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.gateway.app import run
from services.gateway.auth import Authenticator
from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.settings import GatewaySettings
from shared.startup import http_check, load_settings, run_service

DESCRIPTION = (
    "Serve clients: /v1/ws and /client WebSockets, REST /v1/calls, the web page at /, /metrics. "
    "Settings come from the environment (README, Configuration)."
)


def main(argv: list[str] | None = None) -> int:
    """Parse ``--host``/``--port`` (defaults from the environment), run, return the exit status.

    ``--check``: exit 0 when the gateway at ``host:port`` answers ``/healthz`` with 200 (it
    can reach Redis), else 1 with one line saying why. A bad setting exits 2 with one line.
    """
    try:
        settings = load_settings(GatewaySettings)
    except ConfigError as exc:
        print(f"callscribe gateway: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="callscribe gateway", description=DESCRIPTION)
    parser.add_argument("--host", default=settings.host, help=f"listen address ({settings.host})")
    parser.add_argument("--port", type=int, default=settings.port, help=f"port ({settings.port})")
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if the gateway on --host/--port is healthy"
    )
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    setup_logging(settings.log_level)
    if args.check:
        ok, why = asyncio.run(http_check(settings.host, settings.port))
        if not ok:
            print(f"callscribe gateway: unhealthy: {why}", file=sys.stderr)
        return 0 if ok else 1
    try:
        Authenticator(settings)  # refuse to start without a key: one line, exit 2
    except ConfigError as exc:
        print(f"callscribe gateway: {exc}", file=sys.stderr)
        return 2
    return run_service(
        "gateway",
        settings.redis_url,
        lambda stop: run(settings, stop=stop),
        listen=(settings.host, settings.port),
    )


if __name__ == "__main__":
    sys.exit(main())
