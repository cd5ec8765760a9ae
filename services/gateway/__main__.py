"""``callscribe gateway [--host H] [--port P] [--check]``: run the gateway until SIGTERM/SIGINT.

``--check``: exit 0 when the gateway at ``host:port`` answers ``/healthz`` with 200 (it can
reach Redis), else 1 with one line saying why. A bad setting, or no key for watchers' tokens
while authentication is on, exits 2 with one line (:func:`shared.startup.http_service_main`).
"""

from __future__ import annotations

import sys

from services.gateway.app import run
from services.gateway.auth import Authenticator
from shared.settings import GatewaySettings
from shared.startup import http_service_main

DESCRIPTION = (
    "Serve clients: /v1/ws and /client WebSockets, REST /v1/calls, the web page at /, /metrics. "
    "Settings come from the environment (README, Configuration)."
)


def main(argv: list[str] | None = None) -> int:
    """Run the gateway (see the module docstring); the exit status."""
    return http_service_main(
        "gateway",
        GatewaySettings,
        DESCRIPTION,
        argv,
        # refuses to start without a key: one line, exit 2 (run() warns when open)
        refuse=lambda settings: Authenticator(settings, warn=False),
        run=lambda settings, stop: run(settings, stop=stop),
    )


if __name__ == "__main__":
    sys.exit(main())
