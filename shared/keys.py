"""Every Redis key and channel name callscribe uses, in one place (docs/protocol.md, "Redis keys").

All keys of one call carry the call's SID as a hash tag (``cs:{CA…}:…``) so that a Redis
Cluster keeps a call on one shard.
"""

from __future__ import annotations

ACTIVE_CALLS = "cs:calls:active"
"""SET of callSids now streaming: ingest adds, the transcriber removes."""

CALL_EVENTS = "cs:calls:events"
"""PUB/SUB channel for ``call_started`` / ``call_ended`` events."""

JOBS = "cs:jobs"
"""STREAM of work: one entry per call, field ``call_sid``."""

JOBS_GROUP = "transcribers"
"""The consumer group on :data:`JOBS`; a call is owned by the worker holding its pending entry."""

RECENT_CALLS = "cs:calls:recent"
"""ZSET of callSids scored by ``started_at`` (Unix s): calls with a final or an end, kept
``RETENTION_S`` (the transcriber writes, the gateway's history reads)."""

WORDS_PREFIX = "cs:words:"
"""Prefix of the search index ``cs:words:<word>``: a ZSET of the callSids whose transcript has
the word, scored by ``started_at``."""

WEBHOOKS = "cs:webhooks"
"""STREAM of webhook deliveries to make (fields ``event``, ``call_sid``, ``key``, ``payload``),
written by the transcriber in its transactions when webhooks are configured."""

WEBHOOKS_GROUP = "notifiers"
"""The consumer group on :data:`WEBHOOKS`: each delivery goes to one transcriber's notifier."""

WORKERS_PREFIX = "cs:worker:"
"""Prefix of each transcriber's health key ``cs:worker:<consumer>`` (a STRING with a TTL)."""


def meta(call_sid: str) -> str:
    """HASH of the call's metadata (see :class:`shared.schema.CallMeta`)."""
    return f"cs:{{{call_sid}}}:meta"


def audio(call_sid: str) -> str:
    """STREAM of mixed frames: fields ``t`` (ms) and ``pcmu`` (bytes); the last entry has ``eof``."""
    return f"cs:{{{call_sid}}}:audio"


def transcript(call_sid: str) -> str:
    """STREAM of final segments, field ``e``: the event JSON without its ``id`` (the entry ID is it)."""
    return f"cs:{{{call_sid}}}:transcript"


def live(call_sid: str) -> str:
    """PUB/SUB channel carrying every event of the call as JSON."""
    return f"cs:{{{call_sid}}}:live"


def word(token: str) -> str:
    """ZSET of the calls whose finals contain ``token`` (a lower-case word), by ``started_at``."""
    return f"{WORDS_PREFIX}{token}"


def worker(consumer: str) -> str:
    """Health key of one transcriber (STRING ``<json>`` refreshed every few seconds, with a TTL)."""
    return f"{WORKERS_PREFIX}{consumer}"


def stream_token(call_sid: str, token_hash: str) -> str:
    """STRING ``1`` with a TTL: a one-time stream token the TwiML webhook issued for this call
    (``token_hash``: SHA-256 hex of the token, so the token itself is never stored)."""
    return f"cs:{{{call_sid}}}:streamtoken:{token_hash}"


def admitted(call_sid: str) -> str:
    """STRING ``1`` with a TTL: the call's one stream has been admitted; any later ``start``
    with this callSid is refused (a live or ended call cannot be taken over)."""
    return f"cs:{{{call_sid}}}:admitted"


def call_keys(call_sid: str) -> tuple[str, str, str]:
    """The keys that expire together once a call has ended: meta, audio, transcript."""
    return meta(call_sid), audio(call_sid), transcript(call_sid)
