"""shared.replies: the shapes it promises are those a real server's replies have."""

from __future__ import annotations

import redis.asyncio as aioredis

from shared.replies import autoclaimed, batches, entries, pending_ids, scored


async def test_stream_replies_are_bytes_in_the_promised_shapes(redis: aioredis.Redis) -> None:
    """XRANGE, XREAD, XREADGROUP, XAUTOCLAIM and XPENDING unpack as their helpers say."""
    first = await redis.xadd("s", {"k": "v"})
    assert entries(await redis.xrange("s")) == [(first, {b"k": b"v"})]
    assert entries(await redis.xrange("missing")) == []
    [(stream, got)] = batches(await redis.xread({"s": "0"}))
    assert (stream, got) == (b"s", [(first, {b"k": b"v"})])
    assert batches(await redis.xread({"s": first}, block=1)) == []
    await redis.xgroup_create("s", "g", id="0")
    [(_, claimed)] = batches(await redis.xreadgroup("g", "c", {"s": ">"}))
    assert claimed == [(first, {b"k": b"v"})]
    assert pending_ids(await redis.xpending_range("s", "g", min="-", max="+", count=10)) == [first]
    stale = autoclaimed(await redis.xautoclaim("s", "g", "d", min_idle_time=0, start_id="0-0"))
    assert stale == [(first, {b"k": b"v"})]


async def test_scored_members_are_bytes_with_float_scores(redis: aioredis.Redis) -> None:
    """ZRANGEBYSCORE … WITHSCORES unpacks as ``[(member, score), …]``."""
    await redis.zadd("z", {"a": 1.5, "b": 2})
    assert scored(await redis.zrangebyscore("z", 0, 10, withscores=True)) == [
        (b"a", 1.5),
        (b"b", 2.0),
    ]
