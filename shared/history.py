"""Call history and search: the pure part shared by the transcriber (writes) and gateway (reads).

The index (docs/protocol.md, "Call history and search") is two kinds of sorted sets, both
scored by the call's ``started_at`` (Unix seconds), so one ``ZRANGE … BYSCORE`` is a time range:

- ``cs:{p}:calls:recent``: every call that has had a final or has ended;
- ``cs:{p}:words:<word>``: the calls whose finals contain ``<word>`` (:func:`tokens`).

Plain Redis 7 has no RediSearch; these sets cost one ZADD per distinct word of a final, in the
transaction that stores it, answer a query of n words with n range reads and an intersection,
and expire with the calls (each write refreshes the key's TTL to ``RETENTION_S``, readers ignore
scores older than the retention and trim them). Matching is by whole word, case-insensitive.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from shared.schema import CallMeta, CallSummary

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")

MAX_TOKENS = 64
"""Distinct words indexed per final at most (a final is a sentence or two)."""


def tokens(text: str) -> list[str]:
    """The distinct lower-case words of ``text`` in first-seen order: ``"Hi, Karen! hi"`` →
    ``["hi", "karen"]``; at most :data:`MAX_TOKENS`, each 1–40 characters."""
    seen: dict[str, None] = {}
    for match in _WORD.finditer(text.lower()):
        word = match.group()
        if len(word) <= 40:
            seen.setdefault(word, None)
            if len(seen) >= MAX_TOKENS:
                break
    return list(seen)


def parse_time(value: str) -> float:
    """A time bound as Unix seconds: ISO 8601 (a zone-less time is UTC) or a number.

    Raises:
        ValueError: neither.
    """
    try:
        return float(value)
    except ValueError:
        pass
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(unix_s: float) -> str:
    """Unix seconds → ISO 8601 in UTC with the zone and milliseconds."""
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds")


def encode_cursor(started_at: float, call_sid: str) -> str:
    """The cursor after a call: ``"<started_at>:<sid>"`` (clients treat it as opaque)."""
    return f"{started_at!r}:{call_sid}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Inverse of :func:`encode_cursor`.

    Raises:
        ValueError: not a cursor.
    """
    score, sep, sid = cursor.partition(":")
    if not sep or not sid:
        raise ValueError("not a cursor")
    return float(score), sid


def summarize(meta: CallMeta, finals: int, now_s: float) -> CallSummary:
    """A :class:`CallSummary` of ``meta`` with ``finals`` stored finals, durations to ``now_s``."""
    end = meta.ended_at if meta.ended_at is not None else now_s
    return CallSummary(
        **meta.model_dump(by_alias=True),
        started=iso(meta.started_at),
        ended=iso(meta.ended_at) if meta.ended_at is not None else None,
        duration_s=round(max(0.0, end - meta.started_at), 3),
        finals=finals,
        direction=meta.custom_parameters.get("Direction", ""),
    )


def matches_number(meta: CallMeta, number: str) -> bool:
    """True when ``number``'s digits (or text, when it has none) occur in From or To."""
    digits = re.sub(r"\D", "", number)
    if not digits:
        return number in meta.from_ or number in meta.to
    return any(digits in re.sub(r"\D", "", n) for n in (meta.from_, meta.to))
