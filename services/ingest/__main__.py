"""``callscribe ingest [--host H] [--port P] [--check]``: run the ingest service until SIGTERM.

``--check``: exit 0 when ingest at ``host:port`` answers ``/healthz`` with 200 (it can write to
Redis), else 1 with one line saying why. A bad setting, or no Twilio signature checks without
``TWILIO_INSECURE``, exits 2 with one line (:func:`shared.startup.http_service_main`).
"""

from __future__ import annotations

import sys

from shared.settings import IngestSettings
from shared.startup import http_service_main

from .admission import check_settings
from .app import run

DESCRIPTION = (
    "Twilio Media Streams in (/twilio, /twiml), mixed stereo frames to Redis out. "
    "Settings come from the environment (README, Configuration)."
)


def main(argv: list[str] | None = None) -> int:
    """Run ingest (see the module docstring); the exit status."""
    return http_service_main(
        "ingest",
        IngestSettings,
        DESCRIPTION,
        argv,
        refuse=lambda settings: check_settings(settings, warn=False),
        run=lambda settings, stop: run(settings, stop=stop),
    )


if __name__ == "__main__":
    sys.exit(main())
