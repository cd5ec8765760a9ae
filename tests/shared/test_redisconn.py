"""shared.redisconn: the memory:// client behaves like a server where the services rely on it."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection

from shared.redisconn import HiredisPackedConnection, connect, stream_id_tuple


async def test_memory_xreadgroup_blocks_until_an_entry_or_the_timeout() -> None:
    """An empty XREADGROUP waits out BLOCK instead of returning at once; a new entry ends it."""
    r = connect("memory://test-redisconn")
    try:
        await r.xgroup_create("s", "g", id="0", mkstream=True)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert not await r.xreadgroup("g", "c", {"s": ">"}, count=1, block=150)
        assert loop.time() - t0 >= 0.14
        reader = asyncio.create_task(r.xreadgroup("g", "c", {"s": ">"}, count=1, block=5000))
        await asyncio.sleep(0)  # let the reader make its first empty read
        await r.xadd("s", {"k": "v"})
        reply = await asyncio.wait_for(reader, 5)
        assert reply[0][1][0][1] == {b"k": b"v"}
    finally:
        await r.flushall()
        await r.aclose()


async def test_memory_urls_share_one_server_per_process() -> None:
    """Two clients of the same memory:// URL see the same keys (the demo's three services)."""
    a, b = connect("memory://shared-test"), connect("memory://shared-test")
    try:
        await a.set("k", "v")
        assert await b.get("k") == b"v"
    finally:
        await a.flushall()
        await a.aclose()
        await b.aclose()


def test_stream_ids_order_numerically() -> None:
    """Stream IDs compare as (ms, seq), not as strings."""
    assert stream_id_tuple("10-2") > stream_id_tuple("9-99")
    assert stream_id_tuple(b"0") == (0, 0)
    with pytest.raises(ValueError):
        stream_id_tuple("x-1")


@pytest.mark.parametrize(
    "args",
    [
        ("XREAD", "COUNT", 5, "BLOCK", 20, "STREAMS", "cs:{p0.1}:CA1:audio", "0-0"),
        ("XADD", "cs:{p0.1}:CA1:audio", "ID", "1234-1", "t", 1234, "pcmu", b"\xff\x00" * 800),
        ("ZADD", "k", 1733250000.123456, "CA1", 0.1, "CA2"),
        ("HSET", "k", "speaker", "é"),
        ("CLIENT SETNAME", "x"),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[object, ...]) -> None:
    """The C packer sends the very bytes redis-py's own Python packer would."""
    assert b"".join(HiredisPackedConnection().pack_command(*args)) == b"".join(
        Connection().pack_command(*args)
    )


async def test_a_plain_redis_url_packs_with_hiredis(redis_url: str) -> None:
    """``redis://`` clients use the C packer, and commands round-trip through a real server."""
    client = connect(redis_url)
    try:
        assert client.connection_pool.connection_class is HiredisPackedConnection
        await client.xadd("cs:test", {"pcmu": b"\xff\x00"}, id="5-1")
        assert await client.xrange("cs:test") == [(b"5-1", {b"pcmu": b"\xff\x00"})]
    finally:
        await client.aclose()
