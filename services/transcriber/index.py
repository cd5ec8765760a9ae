"""What the transcriber adds to the history and search index (:mod:`shared.history`).

Written by the transcriber, not the gateway: it is the one writer of every final and of every
call's end, and these commands go into the same MULTI as the final's XADD and as the end
transaction, so the index never misses a final or an end (a gateway learns of them over
pub/sub, which drops messages while it is disconnected, and several gateways would each write
the same entries). Every command is idempotent (ZADD, EXPIRE, ZREMRANGEBYSCORE), so a
transaction retried after a lost reply changes nothing more.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from shared import keys
from shared.history import tokens


def index_final(
    pipe: Pipeline, call_sid: str, started_at: float, text: str, retention_s: int
) -> None:
    """Queue: the call into ``cs:{p}:calls:recent`` and ``cs:{p}:words:<w>`` for each word of
    ``text`` (``p``: the call's partition, so the final's MULTI stays in one cluster slot).

    Each word key's TTL is refreshed to ``retention_s``; the entries of calls older than that
    are trimmed by readers and at each call's end.
    """
    tag = keys.tag_of(call_sid)
    pipe.zadd(keys.recent(tag), {call_sid: started_at})
    for token in tokens(text):
        key = keys.word(tag, token)
        pipe.zadd(key, {call_sid: started_at})
        pipe.expire(key, retention_s)


def index_end(
    pipe: Pipeline, call_sid: str, started_at: float, now_s: float, retention_s: int
) -> None:
    """Queue: the call into its partition's ``cs:{p}:calls:recent`` and the trim of that
    partition's calls older than the retention."""
    recent = keys.recent(keys.tag_of(call_sid))
    pipe.zadd(recent, {call_sid: started_at})
    pipe.zremrangebyscore(recent, "-inf", f"({now_s - retention_s:.3f}")
