"""``python -m services.gateway [--host H] [--port P]``: run the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.gateway.app import run
from services.gateway.auth import Authenticator
from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.service import run_until_signal
from shared.settings import GatewaySettings


def main(argv: list[str] | None = None) -> int:
    """Parse ``--host``/``--port`` (defaults from the environment), run, return the exit status."""
    settings = GatewaySettings()
    parser = argparse.ArgumentParser(prog="callscribe gateway", description=__doc__)
    parser.add_argument("--host", default=settings.host, help="address to listen on")
    parser.add_argument("--port", type=int, default=settings.port, help="port to listen on")
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    setup_logging(settings.log_level)
    try:
        Authenticator(settings)  # refuse to start without a key: one line, exit 2
    except ConfigError as exc:
        print(f"callscribe gateway: {exc}", file=sys.stderr)
        return 2
    return run_until_signal(lambda stop: run(settings, stop=stop))


if __name__ == "__main__":
    sys.exit(main())
