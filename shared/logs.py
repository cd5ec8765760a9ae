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


def _quote(value: object) -> str:
    s = str(value)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
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
