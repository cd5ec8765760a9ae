"""One structured log line per event: ``logfmt`` (``key=value``) on stderr.

Usage::

    log = logging.getLogger(__name__)
    log.info("call started", extra={"call_sid": sid, "tracks": 2})

renders ``ts=2026-11-21T09:30:00.123Z level=info logger=services.ingest.app msg="call started"
call_sid=CA… tracks=2``. Never put transcript text, audio, phone numbers or secrets in a line.
"""

from __future__ import annotations

import logging
import sys
import time

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"'})
_PLAIN = frozenset(chr(c) for c in _ESCAPES) | {" ", "="}


def _quote(value: object) -> str:
    """``value`` as one logfmt value: quoted when it holds a space, ``=``, a quote or a control
    character, with every control character (``\\r``, ESC, C1, line separators) escaped, so a
    value a peer chose can neither start a forged log line nor drive a terminal."""
    s = str(value)
    if s == "" or not _PLAIN.isdisjoint(s):
        return '"' + s.translate(_ESCAPES) + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    """Formats a record as one ``key=value`` line; ``extra`` fields follow the message."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "INFO") -> None:
    """Route the root logger to stderr in logfmt at ``level``; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "aiohttp.server", "websockets", "faster_whisper", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
