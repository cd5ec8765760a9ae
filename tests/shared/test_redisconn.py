"""shared.redisconn: the memory:// client behaves like a server where the services rely on it."""

from __future__ import annotations

import asyncio

import pytest

from shared.redisconn import connect, stream_id_tuple


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
