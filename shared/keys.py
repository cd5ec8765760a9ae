"""Every Redis key and channel name callscribe uses, in one place (docs/protocol.md, "Redis keys").

Partitions. Every key is in one of :data:`PARTITIONS` partitions, named by a hash tag
(``cs:{p3.23}:…``): a call's own keys (``cs:{p}:<sid>:meta`` …) and the shared structures that
the call's transactions touch (the job stream, the active set, the history and search index, the
webhook outbox, the sharded event channel) carry the tag of the call's partition
(:func:`tag_of`). So on a Redis Cluster every transaction of a call (its start, each final, its
end) touches one hash slot, with no step that spans two, and the shared structures are split
twelve ways instead of living on one shard. A reader of a shared structure reads every
partition (:data:`TAGS`). On a single Redis the partitions are only names.

The tags are chosen so that partition ``i`` hashes into the ``i``-th twelfth of the 16,384 hash
slots: a cluster whose masters split the slots evenly (``redis-cli --cluster create`` does) gets
the same number of partitions on each of 1, 2, 3, 4, 6 or 12 masters. More masters than
partitions would leave some without callscribe keys; changing :data:`PARTITIONS` renames keys.
"""

from __future__ import annotations

import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PARTITIONS = 12
"""How many partitions the keys are split into (see the module docstring)."""


def _tags() -> tuple[str, ...]:
    """``p<i>.<n>``, with the smallest ``n`` putting partition ``i`` in its twelfth of the slots."""
    out = []
    for i in range(PARTITIONS):
        lo = i * REDIS_CLUSTER_HASH_SLOTS // PARTITIONS
        hi = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // PARTITIONS
        n = 0
        while not lo <= key_slot(f"p{i}.{n}".encode()) < hi:
            n += 1
        out.append(f"p{i}.{n}")
    return tuple(out)


TAGS = _tags()
"""The hash tag of each partition (``"p0.1"``, ``"p1.15"`` …), in partition order."""


def tag_of(call_sid: str) -> str:
    """The hash tag of the call's partition: CRC-32 of the callSid modulo :data:`PARTITIONS`."""
    return TAGS[zlib.crc32(call_sid.encode()) % PARTITIONS]


CALL_EVENTS = "cs:calls:events"
"""PUB/SUB channel for ``call_started`` / ``call_updated`` / ``call_ended`` events on a single
Redis (on a cluster: :func:`events`)."""

JOBS_GROUP = "transcribers"
"""The consumer group on each :func:`jobs` stream; a call is owned by the worker holding its
pending entry."""

WEBHOOKS_GROUP = "notifiers"
"""The consumer group on each :func:`webhooks` stream: each delivery goes to one notifier."""

WORKERS_PREFIX = "cs:worker:"
"""Prefix of each transcriber's health key ``cs:worker:<consumer>`` (a STRING with a TTL)."""


def active(tag: str) -> str:
    """SET of the partition's callSids now streaming: ingest adds, the transcriber removes."""
    return f"cs:{{{tag}}}:calls:active"


def jobs(tag: str) -> str:
    """STREAM of the partition's work: one entry per call, field ``call_sid``."""
    return f"cs:{{{tag}}}:jobs"


def recent(tag: str) -> str:
    """ZSET of the partition's callSids scored by ``started_at`` (Unix s): calls with a final or
    an end, kept ``RETENTION_S`` (the transcriber writes, the gateway's history reads)."""
    return f"cs:{{{tag}}}:calls:recent"


def word(tag: str, token: str) -> str:
    """ZSET of the partition's calls whose finals contain ``token`` (a lower-case word), scored
    by ``started_at``: the search index."""
    return f"cs:{{{tag}}}:words:{token}"


def webhooks(tag: str) -> str:
    """STREAM of webhook deliveries to make (fields ``event``, ``call_sid``, ``key``,
    ``payload``), written by the transcriber in its transactions when webhooks are configured."""
    return f"cs:{{{tag}}}:webhooks"


def events(tag: str) -> str:
    """Sharded PUB/SUB channel (SPUBLISH) of the partition's call events, on a Redis Cluster."""
    return f"cs:{{{tag}}}:events"


def meta(call_sid: str) -> str:
    """HASH of the call's metadata (see :class:`shared.schema.CallMeta`)."""
    return f"cs:{{{tag_of(call_sid)}}}:{call_sid}:meta"


def audio(call_sid: str) -> str:
    """STREAM of mixed frames: fields ``t`` (ms) and ``pcmu`` (bytes); the last entry has ``eof``."""
    return f"cs:{{{tag_of(call_sid)}}}:{call_sid}:audio"


def transcript(call_sid: str) -> str:
    """STREAM of final segments, field ``e``: the event JSON without its ``id`` (the entry ID is it)."""
    return f"cs:{{{tag_of(call_sid)}}}:{call_sid}:transcript"


def live(call_sid: str) -> str:
    """PUB/SUB channel carrying every event of the call as JSON (sharded on a cluster)."""
    return f"cs:{{{tag_of(call_sid)}}}:{call_sid}:live"


def worker(consumer: str) -> str:
    """Health key of one transcriber (STRING ``<json>`` refreshed every few seconds, with a TTL)."""
    return f"{WORKERS_PREFIX}{consumer}"


def stream_token(call_sid: str, token_hash: str) -> str:
    """STRING ``1`` with a TTL: a one-time stream token the TwiML webhook issued for this call
    (``token_hash``: SHA-256 hex of the token, so the token itself is never stored)."""
    return f"cs:{{{tag_of(call_sid)}}}:{call_sid}:streamtoken:{token_hash}"


def admitted(call_sid: str) -> str:
    """STRING ``1`` with a TTL: the call's one stream has been admitted; any later ``start``
    with this callSid is refused (a live or ended call cannot be taken over)."""
    return f"cs:{{{tag_of(call_sid)}}}:{call_sid}:admitted"


def call_keys(call_sid: str) -> tuple[str, str, str]:
    """The keys that expire together once a call has ended: meta, audio, transcript."""
    return meta(call_sid), audio(call_sid), transcript(call_sid)


def sid_of(key: str | bytes) -> str:
    """The callSid in a per-call key or channel (``cs:{p}:<sid>:audio`` → ``<sid>``).

    Raises:
        ValueError: not a per-call key.
    """
    text = key.decode() if isinstance(key, bytes) else key
    parts = text.split(":")
    if len(parts) < 4 or not parts[1].startswith("{"):
        raise ValueError(f"not a per-call key: {text!r}")
    return parts[2]
