"""shared.redisconn: the memory:// client behaves like a server where the services rely on it;
every client guards its commands against cancellations redis-py swallows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection

from shared.cluster import ready
from shared.redisconn import HiredisPackedConnection, connect, stream_id_tuple
from shared.retry import CancelGuard, GuardedPubSub, cmd


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


# ------------------------------------------------------------------ swallowed cancellations

ParseResponse = Callable[..., Awaitable[Any]]


def _swallowing(real: ParseResponse, command: str) -> tuple[ParseResponse, asyncio.Event]:
    """A ``parse_response`` that makes the next ``command`` do what redis-py 8.1 sometimes does:
    its reply is in flight (the returned event is set) until the task is cancelled, the
    cancellation is swallowed, and the real reply is read and returned normally. The command
    name is the last positional argument, whether ``real`` is bound (a client's) or not (a
    ``ClusterNode`` class's)."""
    in_flight = asyncio.Event()

    async def parse_response(*args: Any, **options: Any) -> Any:
        if args[-1] == command and not in_flight.is_set():
            in_flight.set()
            with contextlib.suppress(asyncio.CancelledError):  # swallowed
                await asyncio.Event().wait()  # never set: only the cancellation ends it
        return await real(*args, **options)

    return parse_response, in_flight


def _swallow_next(
    client: aioredis.Redis, command: str, monkeypatch: pytest.MonkeyPatch
) -> asyncio.Event:
    """Make the next ``command`` of ``client`` swallow its cancellation (:func:`_swallowing`)."""
    if isinstance(client, RedisCluster):  # ClusterNode has __slots__: patch the class
        fake, in_flight = _swallowing(ClusterNode.parse_response, command)
        monkeypatch.setattr(ClusterNode, "parse_response", fake)
    else:
        fake, in_flight = _swallowing(client.parse_response, command)
        monkeypatch.setattr(client, "parse_response", fake)
    return in_flight


async def _cancel_mid_incr(
    client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    wrap: Callable[[Awaitable[Any]], Awaitable[Any]] = lambda a: a,
) -> asyncio.Task[Any]:
    """Start ``INCRBY cs:test:n 1``, cancel its task while the reply is in flight (the reply is
    then swallowed), and return the task once it is done."""
    in_flight = _swallow_next(client, "INCRBY", monkeypatch)  # what incr() sends

    async def incr() -> Any:
        return await wrap(client.incr("cs:test:n"))

    task = asyncio.create_task(incr())
    await asyncio.wait_for(in_flight.wait(), 5)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done()
    return task


async def test_the_fake_swallows_a_cancellation_on_an_unguarded_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: on redis-py's own client class the cancelled INCR returns normally."""
    client = fakeredis.FakeAsyncRedis()
    try:
        task = await _cancel_mid_incr(client, monkeypatch)
        assert not task.cancelled() and task.result() == 1
    finally:
        await client.aclose()


@pytest.mark.parametrize("wrap", [lambda a: a, cmd], ids=["bare", "cmd"])
async def test_a_command_that_swallows_its_cancellation_still_ends_the_task(
    monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Awaitable[Any]], Awaitable[Any]]
) -> None:
    """memory://: the cancelled INCR raises CancelledError, with or without ``cmd()`` around it;
    it was carried out, and the next command reads its own reply."""
    client = connect("memory://test-guard")
    try:
        task = await _cancel_mid_incr(client, monkeypatch, wrap)
        assert task.cancelled()
        assert await client.get("cs:test:n") == b"1"
    finally:
        await client.flushall()
        await client.aclose()


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_a_command_that_swallows_its_cancellation_ends_the_task_on_a_server(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis:// and redis+cluster://: the same, through a real server; pipelines still run."""
    client = connect(redis_url)
    try:
        await ready(client)  # a cluster reads its slot map before the command is patched
        task = await _cancel_mid_incr(client, monkeypatch)
        assert task.cancelled()
        monkeypatch.undo()
        assert await client.get("cs:test:n") == b"1"
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr("cs:test:n")
            pipe.get("cs:test:n")
            assert await pipe.execute() == [2, b"2"]
    finally:
        await client.aclose()


async def test_a_pubsub_read_that_swallows_its_cancellation_still_ends_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``get_message`` of the clients' pub/sub is guarded too."""
    client = connect("memory://test-guard-pubsub")
    ps = client.pubsub()
    in_flight = asyncio.Event()

    async def swallowing_read(**_: Any) -> None:
        in_flight.set()
        with contextlib.suppress(asyncio.CancelledError):  # swallowed
            await asyncio.Event().wait()  # never set: only the cancellation ends it

    try:
        await ps.subscribe("cs:test:ch")
        monkeypatch.setattr(ps, "parse_response", swallowing_read)
        task = asyncio.create_task(ps.get_message(timeout=None))
        await asyncio.wait_for(in_flight.wait(), 5)
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled()
    finally:
        await ps.aclose()
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://127.0.0.1:1/0", {}),
        ("redis://127.0.0.1:1/0", {"pool_timeout_s": 1.0}),
        ("rediss://127.0.0.1:1/0", {}),
        ("unix:///nonexistent/redis.sock", {}),
        ("memory://test-guard-class", {}),
        ("redis+cluster://127.0.0.1:1", {}),
    ],
)
async def test_every_client_connect_returns_guards_its_commands(
    url: str, options: dict[str, Any]
) -> None:
    """Each URL kind gives a client whose ``execute_command`` is the guard's (nothing later in
    its classes overrides it), whose pub/sub is guarded, and whose pipelines still queue.
    (Nothing connects: no server is needed.)"""
    client = connect(url, **options)
    try:
        assert isinstance(client, CancelGuard)
        assert type(client).execute_command is CancelGuard.execute_command
        pipe = client.pipeline(transaction=False)
        assert type(pipe) in (Pipeline, ClusterPipeline)
        assert pipe.set("k", "v") is pipe and len(pipe) == 1
        if not isinstance(client, RedisCluster):
            assert isinstance(client.pubsub(), GuardedPubSub)
    finally:
        await client.aclose()
