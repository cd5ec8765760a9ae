"""``python -m services.ingest [--host H] [--port P]``: run the ingest service until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.service import run_until_signal
from shared.settings import IngestSettings

from .admission import check_settings
from .app import run


def main(argv: list[str] | None = None) -> int:
    """Parse ``--host``/``--port`` (defaults from the environment), serve, return the exit status."""
    settings = IngestSettings()
    parser = argparse.ArgumentParser(
        prog="python -m services.ingest",
        description="Twilio Media Streams in, mixed stereo frames to Redis out.",
    )
    parser.add_argument("--host", default=settings.host, help=f"listen address ({settings.host})")
    parser.add_argument("--port", type=int, default=settings.port, help=f"port ({settings.port})")
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    setup_logging(settings.log_level)
    try:
        check_settings(settings, warn=False)  # refuse to start unprotected: one line, exit 2
    except ConfigError as exc:
        print(f"callscribe ingest: {exc}", file=sys.stderr)
        return 2
    return run_until_signal(lambda stop: run(settings, stop=stop))


if __name__ == "__main__":
    sys.exit(main())
