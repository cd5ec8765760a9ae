"""The ``callscribe`` command: ``callscribe {ingest,transcriber,gateway,simulate,watch,demo,token}``.

The three service subcommands hand the arguments after their name to
``services.<name>.__main__.main(argv)`` (so ``callscribe ingest --port 5000`` is ``python -m
services.ingest --port 5000``); the global ``--log-level`` before the name sets ``LOG_LEVEL``.
The others are this package's tools. Exit status: 0 success, 1 failure, 2 bad arguments,
130 interrupted (SIGINT/SIGTERM).

The argument parsers of every command sit here together, so ``callscribe --help`` and each
subcommand's help read as one; the tools' handlers are :mod:`callscribe.commands`' (REST ones
:mod:`callscribe.rest`'s).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys

from callscribe import commands
from callscribe.rest import add_rest_commands
from shared import aio
from shared.logs import setup_logging
from shared.settings import LOG_LEVELS

SERVICES = {
    "ingest": "Twilio Media Streams WebSocket → mixed frames in Redis (port 5000)",
    "transcriber": "worker: claims calls, transcribes, publishes (--check: health)",
    "gateway": "clients: /v1/ws, /client, REST, web page (port 8080)",
}
EXIT_INTERRUPTED = aio.EXIT_INTERRUPTED
TOOLS_LOG_LEVEL = "WARNING"
"""Log level of simulate, watch, calls, transcript and demo unless ``--log-level`` or
``LOG_LEVEL`` says otherwise (the services default to ``LOG_LEVEL``'s INFO)."""


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``callscribe`` argument parser (the service subcommands are listed, not parsed)."""
    parser = argparse.ArgumentParser(
        prog="callscribe",
        description="Live transcripts of Twilio phone calls, for many watchers at once.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level on stderr; default LOG_LEVEL, else INFO for the services and WARNING "
        "for the other commands (their own output stays readable)",
    )
    parser.add_argument("--version", action="version", version=f"callscribe {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in SERVICES.items():
        # options after a service's name are its own: parsed by services.<name>.__main__
        sub.add_parser(name, help=text, add_help=False)

    sim = sub.add_parser(
        "simulate",
        help="stream WAV files into ingest as Twilio calls",
        description="Play WAV files into ingest as Twilio Media Streams calls. A stereo file is "
        "caller/callee; two mono files likewise; one mono file is a one-track call. Without a "
        "file: the bundled two-party recording (call_dentist.wav, 28 s).",
    )
    sim.add_argument(
        "audio",
        nargs="*",
        metavar="AUDIO",
        help="WAV file(s), any rate/width; none: the bundled two-party recording",
    )
    sim.add_argument(
        "--print-bundled", action="store_true", help="print the bundled recording's path and exit"
    )
    sim.add_argument("--ingest", default="ws://127.0.0.1:5000/twilio", help="ingest's /twilio URL")
    sim.add_argument("--speed", type=float, default=1.0, help="pace: 1 = real time, 4 = 4x faster")
    sim.add_argument("--calls", type=int, default=1, help="concurrent calls (distinct SIDs)")
    sim.add_argument("--loss", type=float, default=0.0, help="fraction of packets to drop")
    sim.add_argument(
        "--outbound-delay-ms", type=int, default=0, help="start the callee's track this late (ms)"
    )
    sim.add_argument("--seed", type=int, default=None, help="seed of the loss pattern")
    sim.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="sign as Twilio (X-Twilio-Signature) and get each call's stream token from "
        "/twiml first; default $TWILIO_AUTH_TOKEN",
    )
    sim.add_argument("--public-url", default=None, help="ingest's public base URL (signature URL)")
    sim.add_argument(
        "--param", action="append", default=[], metavar="K=V", help="custom parameter (From, To…)"
    )
    sim.add_argument("--open-timeout-s", type=float, default=10.0, help="handshake timeout (s)")
    sim.set_defaults(func=commands.cmd_simulate)

    watch = sub.add_parser(
        "watch",
        help="follow a call's transcript in the terminal",
        description="Follow a call's live transcript through the gateway's /v1/ws. Without "
        "CALL_SID: the only live call, else the next one to start. Exits 0 when the call ends "
        "with its transcript complete; 1 when the call is unknown, recognition failed or the "
        "gateway stays unreachable.",
    )
    watch.add_argument("call_sid", nargs="?", metavar="CALL_SID", help="the call to follow")
    watch.add_argument(
        "--gateway", default="ws://127.0.0.1:8080", help="gateway base or /v1/ws URL"
    )
    watch.add_argument(
        "--since", default=None, help="show finals after this history ID (default: the whole call)"
    )
    watch.add_argument("--open-timeout-s", type=float, default=10.0, help="handshake timeout (s)")
    watch.add_argument(
        "--retry-for-s",
        type=float,
        default=120.0,
        help="keep reconnecting to the gateway this long after losing it (s, 120)",
    )
    watch.add_argument(
        "--reconnects", type=int, default=None, help="at most this many tries in a row (no limit)"
    )
    watch.add_argument(
        "--token",
        default=os.environ.get("CALLSCRIBE_TOKEN"),
        help="bearer token for the gateway (callscribe token); default $CALLSCRIBE_TOKEN",
    )
    watch.set_defaults(func=commands.cmd_watch)

    token = sub.add_parser(
        "token",
        help="mint a watcher token for the gateway (HS256, $JWT_SECRET)",
        description="Print a signed token (JWT, HS256 with $JWT_SECRET, audience $JWT_AUDIENCE "
        "or callscribe) that lets its holder watch calls through the gateway. Without --number "
        "or --call it sees every call.",
    )
    token.add_argument(
        "--number", action="append", default=[], metavar="E164", help="only calls from/to it"
    )
    token.add_argument("--call", default=None, metavar="CALL_SID", help="only this call")
    token.add_argument(
        "--history", action="store_true", help="may replay what was said before subscribing"
    )
    token.add_argument("--ttl-s", type=float, default=3600.0, help="valid for this long (s)")
    token.add_argument("--subject", default="operator", help="who holds it (the sub claim)")
    token.set_defaults(func=commands.cmd_token)
    add_rest_commands(sub)

    demo = sub.add_parser(
        "demo",
        help="run everything in one process and transcribe a bundled recording",
        description="Run ingest, transcriber and gateway in this process (REDIS_URL=memory:// "
        "unless set; embedded Whisper), stream a bundled two-party recording through them as a "
        "Twilio call and show its live transcript.",
    )
    demo.add_argument("--speed", type=float, default=1.0, help="pace: 1 = real time")
    demo.add_argument("--serve", action="store_true", help="keep serving after the demo call")
    demo.add_argument("--ingest-port", type=int, default=None, help="ingest port (5000 if free)")
    demo.add_argument("--gateway-port", type=int, default=None, help="gateway port (8080 if free)")
    demo.add_argument("--audio", default=None, help="a WAV to stream instead of the bundled one")
    demo.set_defaults(func=commands.cmd_demo)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("callscribe")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``callscribe`` console script; returns the exit status.

    Global options (``--log-level``, ``--version``) come before the subcommand; a service
    subcommand's own options (``--host``, ``--port``, ``--check``, ``--help``) after it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if args.command in SERVICES:
            if args.log_level:
                os.environ["LOG_LEVEL"] = args.log_level  # the service reads its settings
            module = importlib.import_module(f"services.{args.command}.__main__")
            return int(module.main(rest))
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        setup_logging(args.log_level or os.environ.get("LOG_LEVEL") or TOOLS_LOG_LEVEL)
        return int(args.func(args))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are set (imports, model)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
