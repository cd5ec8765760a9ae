"""redis-py's reply annotations narrowed to the shapes our clients actually receive.

redis-py 8.1 annotates each command's reply as the union of every shape it can have (RESP2 or
RESP3, ``decode_responses`` on or off), so ``entry_id`` of an XRANGE entry is typed
``bytes | str | None``. Our clients speak RESP2 without ``decode_responses``
(:func:`shared.redisconn.connect`), so replies are bytes: these functions say so, once, at zero
cost (:func:`typing.cast` checks nothing at run time; the shapes are what redis-py's RESP2
parsers build, ``parse_stream_list`` and ``parse_xread``).
"""

from __future__ import annotations

from typing import Any, cast

from redis.typing import (
    StreamRangeResponse,
    XPendingRangeResponse,
    XReadGroupResponse,
    XReadResponse,
    ZSetRangeResponse,
)

StreamFields = dict[bytes, bytes]
"""A stream entry's fields, names and values as written (UTF-8 bytes)."""

StreamEntry = tuple[bytes, StreamFields]
"""One stream entry: its ID (``b"1700000000000-3"``) and its fields."""

ClaimedEntry = tuple[bytes, StreamFields | None]
"""An entry XAUTOCLAIM/XCLAIM returned: fields are None when it was deleted meanwhile."""

StreamBatch = tuple[bytes, list[StreamEntry]]
"""One stream's part of an XREAD/XREADGROUP reply: the stream's key and its new entries
(a two-item list at run time; typed as the tuple it is unpacked as)."""


def entries(reply: StreamRangeResponse | None) -> list[StreamEntry]:
    """An XRANGE/XREVRANGE reply as ``[(id, fields), …]`` (``[]`` for an empty or missing stream)."""
    return cast(list[StreamEntry], reply or [])


def batches(reply: XReadResponse | XReadGroupResponse | None) -> list[StreamBatch]:
    """An XREAD/XREADGROUP reply as ``[(stream_key, entries), …]`` (``[]`` when BLOCK ran out)."""
    return cast(list[StreamBatch], reply or [])


def autoclaimed(reply: list[Any]) -> list[ClaimedEntry]:
    """The entries of an XAUTOCLAIM reply (``[next_start_id, entries, deleted_ids]``)."""
    return cast(list[ClaimedEntry], reply[1])


def pending_ids(reply: XPendingRangeResponse) -> list[bytes]:
    """The entry IDs of an XPENDING … IDLE/range reply, in its order."""
    return [cast(bytes, p["message_id"]) for p in reply]


def scored(reply: ZSetRangeResponse) -> list[tuple[bytes, float]]:
    """A ZRANGE… WITHSCORES reply as ``[(member, score), …]``."""
    return cast(list[tuple[bytes, float]], reply)
