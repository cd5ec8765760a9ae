"""Call history and search for the gateway: ``GET /v1/calls?…``, ``/v1/ws`` ``history``.

Reads the index the transcriber writes (:mod:`shared.history`, docs/protocol.md "Call history
and search") plus the ``cs:{p}:calls:active`` sets, so calls that are queued or have no final yet are
listed too. Every index is split in :data:`shared.keys.PARTITIONS` partitions: each range read
is one pipeline over all of them, merged. One page: candidates (every word's set intersected when ``q`` is given, else the recent
set) within the time range, merged with the active calls, newest first after the cursor; their
meta hashes and history lengths in pipelines of :data:`BATCH`; filtered by status and number
until ``limit`` calls are found or :data:`SCAN_MAX` candidates were looked at (then
``next_cursor`` lets the client continue). Cost per page: O(words × matches) for the range
reads, plus one HGETALL and one XLEN per candidate looked at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import redis.asyncio as aioredis

from services.gateway import store
from shared import keys
from shared.errors import ClientMessageError
from shared.history import (
    decode_cursor,
    encode_cursor,
    matches_number,
    parse_time,
    summarize,
    tokens,
)
from shared.replies import scored
from shared.schema import CallMeta, CallSummary, HistoryPage, HistoryRequest

BATCH = 100
"""Candidates whose metadata is read per pipeline."""

SCAN_MAX = 2000
"""Candidates looked at per page at most; past it the page ends early with a cursor."""

CANDIDATES_MAX = 20_000
"""Entries read from one sorted set per page at most (a day of a busy contact centre)."""


@dataclass
class Query:
    """A validated history query: times in Unix seconds, ``words`` lower-case (see
    :class:`shared.schema.HistoryRequest` for the meaning of each)."""

    status: str | None = None
    number: str | None = None
    from_s: float | None = None
    to_s: float | None = None
    words: tuple[str, ...] = ()
    after: tuple[float, str] | None = None
    limit: int = 50

    @classmethod
    def from_request(cls, req: HistoryRequest) -> Query:
        """Check and convert a request.

        Raises:
            ClientMessageError: ``bad_request`` for a time or cursor that cannot be read.
        """
        try:
            from_s = parse_time(req.from_) if req.from_ else None
            to_s = parse_time(req.to) if req.to else None
        except ValueError:
            raise ClientMessageError(
                "bad_request", "from/to: ISO 8601 (2026-12-03T09:00:00Z) or Unix seconds"
            ) from None
        try:
            after = decode_cursor(req.cursor) if req.cursor else None
        except ValueError:
            raise ClientMessageError("bad_request", "cursor: use a next_cursor as given") from None
        return cls(
            status=req.status,
            number=req.number or None,
            from_s=from_s,
            to_s=to_s,
            words=tuple(tokens(req.q or ""))[:8],
            after=after,
            limit=req.limit,
        )


async def _scored(
    r: aioredis.Redis, key: Callable[[str], str], low: float, high: float, timeout_s: float
) -> dict[str, float]:
    """The members of ``key(tag)`` scored in ``[low, high]``, over every partition (one
    pipeline; at most ``CANDIDATES_MAX`` each, the newest ``CANDIDATES_MAX`` kept)."""
    async with store.redis_op(timeout_s), r.pipeline(transaction=False) as pipe:
        for tag in keys.TAGS:
            pipe.zrevrangebyscore(key(tag), high, low, start=0, num=CANDIDATES_MAX, withscores=True)
        replies = await pipe.execute()
    rows = sorted((row for reply in replies for row in scored(reply)), key=lambda r: -r[1])
    return {m.decode(): float(s) for m, s in rows[:CANDIDATES_MAX]}


def _word(token: str, tag: str) -> str:
    return keys.word(tag, token)


async def _candidates(
    r: aioredis.Redis, q: Query, retention_s: float, timeout_s: float, now_s: float
) -> list[tuple[float, str]]:
    """(started_at, sid) of the calls that may match, newest first, after the cursor."""
    low = max(q.from_s or 0.0, now_s - retention_s)
    high = q.to_s if q.to_s is not None else float("inf")
    if q.after is not None:
        high = min(high, q.after[0])
    found: dict[str, float] | None = None
    for word in q.words:
        scored = await _scored(r, partial(_word, word), low, high, timeout_s)
        found = scored if found is None else {s: v for s, v in found.items() if s in scored}
        if not found:
            return []
    if found is None:
        found = await _scored(r, keys.recent, low, high, timeout_s)
        for meta in await store.active_calls(r, timeout_s):  # queued, or live with no final
            if low <= meta.started_at <= high:
                found.setdefault(meta.call_sid, meta.started_at)
    rows = sorted(((v, s) for s, v in found.items()), reverse=True)
    if q.after is not None:
        rows = [row for row in rows if row < q.after]
    return rows


async def _summaries(
    r: aioredis.Redis, rows: list[tuple[float, str]], timeout_s: float, now_s: float
) -> list[CallSummary | None]:
    async with store.redis_op(timeout_s), r.pipeline(transaction=False) as pipe:
        for _, sid in rows:
            pipe.hgetall(keys.meta(sid))
            pipe.xlen(keys.transcript(sid))
        replies = await pipe.execute()
    out: list[CallSummary | None] = []
    for i in range(len(rows)):
        try:
            meta = CallMeta.from_redis(replies[2 * i])
        except ValueError:
            out.append(None)  # expired since it was indexed
            continue
        out.append(summarize(meta, int(replies[2 * i + 1] or 0), now_s))
    return out


async def search(
    r: aioredis.Redis,
    q: Query,
    *,
    retention_s: float,
    timeout_s: float,
    visible: Callable[[CallSummary], bool] | None = None,
) -> HistoryPage:
    """One page of calls matching ``q`` that ``visible`` lets through (a token's scope; all when
    None), newest first: the scope is applied before the page is cut, so a page is short only
    when nothing more matches (or ``SCAN_MAX`` candidates were looked at). Raises
    RedisUnavailable."""
    now_s = time.time()
    rows = await _candidates(r, q, retention_s, timeout_s, now_s)
    calls: list[CallSummary] = []
    looked = 0
    last: tuple[float, str] | None = None
    while rows and len(calls) < q.limit and looked < SCAN_MAX:
        batch, rows = rows[:BATCH], rows[BATCH:]
        for row, summary in zip(batch, await _summaries(r, batch, timeout_s, now_s), strict=True):
            looked += 1
            last = row
            if summary is not None and _keep(summary, q) and (visible is None or visible(summary)):
                calls.append(summary)
                if len(calls) == q.limit:
                    rows = batch[batch.index(row) + 1 :] + rows
                    break
    more = bool(rows) and last is not None
    return HistoryPage(calls=calls, next_cursor=encode_cursor(*last) if more and last else None)


def _keep(call: CallSummary, q: Query) -> bool:
    if q.status is not None and call.status != q.status:
        return False
    return q.number is None or matches_number(call, q.number)
