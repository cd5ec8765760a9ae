"""Opening Redis: a real server from ``REDIS_URL``, a Redis Cluster (``redis+cluster://``,
:mod:`shared.cluster`), or ``memory://`` for single-process mode.

``memory://`` gives an in-process fakeredis; every connection opened in one process shares one
fake server, so ingest, transcriber and gateway running in one process (``callscribe demo``) see
the same keys. It cannot be shared between processes.

Every client :func:`connect` returns guards each of its commands against the cancellations
redis-py swallows (:func:`shared.retry.cmd`, applied by :class:`shared.retry.CancelGuard`):
:class:`GuardedRedis` for ``redis://``, ``rediss://`` and ``unix://``, a subclass of it for
``memory://``, :class:`shared.cluster.GuardedRedisCluster` for ``redis+cluster://``. Their
``pubsub()`` is a :class:`shared.retry.GuardedPubSub` (on a cluster, the hub's sharded pub/sub
opens its node clients here too, :mod:`services.gateway.sharded`). So a call site without
``cmd()`` is as safe as one with it; pipelines are not affected (their ``execute_command`` only
queues, and ``execute()`` is awaited through ``cmd()`` where it matters).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.connection import HiredisRespSerializer

from shared.cluster import connect_cluster, is_cluster_url
from shared.retry import CancelGuard, GuardedPubSub

_fake_servers: dict[str, Any] = {}
_memory_class: Any = None

MEMORY_POLL_MS = 10
"""How often the memory:// client re-asks while emulating ``XREADGROUP … BLOCK``, ms."""


# The ignore[misc] on these classes: once a class has two bases mypy checks redis-py's (and
# fakeredis's) own bases against each other; their command_info and from_url differ there.
class GuardedRedis(CancelGuard, aioredis.Redis):  # type: ignore[misc]
    """``redis.asyncio.Redis`` whose commands are guarded by :func:`shared.retry.cmd` and whose
    ``pubsub()`` is a :class:`shared.retry.GuardedPubSub` (module docstring)."""

    def pubsub(self, **kwargs: Any) -> GuardedPubSub:
        """A pub/sub object on this client's pool, as redis-py's, with its commands guarded."""
        return GuardedPubSub(
            self.connection_pool, event_dispatcher=self._event_dispatcher, **kwargs
        )


def _memory_redis_class() -> Any:
    """fakeredis's async client, guarded as :class:`GuardedRedis`, with ``XREADGROUP … BLOCK``
    that blocks.

    fakeredis 2.40 answers XREADGROUP at once when nothing is new, whatever BLOCK says
    (measured: ~10,000 empty replies a second with ``block=100``; XREAD does block), so a
    consumer-group loop would spin a core and starve the Whisper threads. This subclass re-asks
    every :data:`MEMORY_POLL_MS` until an entry arrives or BLOCK ms pass, as a server would.
    """
    global _memory_class
    if _memory_class is None:
        import asyncio

        import fakeredis

        class MemoryRedis(GuardedRedis, fakeredis.FakeAsyncRedis):  # type: ignore[misc]
            async def xreadgroup(self, *args: Any, block: int | None = None, **kw: Any) -> Any:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + (block or 0) / 1000
                while True:
                    reply = await super().xreadgroup(*args, **kw)
                    remaining = deadline - loop.time()
                    if reply or not block or remaining <= 0:
                        return reply
                    await asyncio.sleep(min(MEMORY_POLL_MS / 1000, remaining))

        _memory_class = MemoryRedis
    return _memory_class


def is_memory(url: str) -> bool:
    """True for ``memory://`` URLs (single-process fakeredis)."""
    return url.startswith("memory://")


class HiredisPackedConnection(aioredis.Connection):
    """redis-py's asyncio connection, packing each command in C as redis-py's sync client does.

    redis-py 8.1's asyncio ``Connection.pack_command`` is pure Python, where its sync
    ``Connection`` packs with ``HiredisRespSerializer`` whenever hiredis is installed. This
    class uses that same serializer, so the bytes sent are the same
    (tests/shared/test_redisconn.py). Measured: an XREAD over 100 call streams packs in 36 µs
    instead of 132 µs, an XADD of a frame in 2.4 µs instead of 4.7 µs.
    """

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        """The RESP encoding of one command (``DataError`` for an argument of another type)."""
        return list(self._packer.pack(*args))


def _packing(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with :class:`HiredisPackedConnection` for a plain ``redis://`` URL (TLS and
    Unix sockets keep redis-py's own classes), unless the caller chose a class."""
    if url.startswith("redis://") and "connection_class" not in kwargs:
        return {**kwargs, "connection_class": HiredisPackedConnection}
    return kwargs


def connect(
    url: str,
    *,
    socket_timeout_s: float = 30.0,
    pool_max_connections: int | None = None,
    pool_timeout_s: float | None = None,
    **kwargs: Any,
) -> aioredis.Redis:
    """Return a ``redis.asyncio.Redis`` for ``url`` with responses as bytes, every command
    guarded against swallowed cancellations (:class:`GuardedRedis`, module docstring).

    ``redis+cluster://host:port[,host:port…]`` gives a ``RedisCluster`` instead
    (:func:`shared.cluster.connect_cluster`: ``pool_max_connections`` per node, no blocking pool).

    ``socket_timeout_s`` is set explicitly (redis-py 8 defaults to 5 s) and must be longer than
    any ``BLOCK`` the caller uses. ``health_check_interval`` keeps idle pub/sub sockets honest.
    With ``pool_timeout_s`` the client uses a ``BlockingConnectionPool`` of
    ``pool_max_connections`` (default 100): a command that finds every connection busy waits
    up to ``pool_timeout_s`` for one instead of failing at once (redis-py's default pool
    raises "Too many connections";
    https://redis.readthedocs.io/en/stable/connections.html#connectionpool-async).
    """
    if is_cluster_url(url):
        return connect_cluster(
            url, socket_timeout_s=socket_timeout_s, max_connections=pool_max_connections, **kwargs
        )
    if is_memory(url):
        import fakeredis

        server = _fake_servers.setdefault(url, fakeredis.FakeServer())
        client: aioredis.Redis = _memory_redis_class()(server=server, **kwargs)
        return client
    if pool_timeout_s is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=pool_max_connections or 100,
            timeout=pool_timeout_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 5.0),
            health_check_interval=15,
            retry_on_timeout=False,
            **_packing(url, kwargs),
        )
        blocking: aioredis.Redis = GuardedRedis.from_pool(pool)  # owns the pool: aclose closes it
        return blocking
    return GuardedRedis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=15,
        retry_on_timeout=False,
        **_packing(url, kwargs),
    )


def as_text(value: bytes | str) -> str:
    """A Redis reply field as text (the clients return bytes; UTF-8 is how we write them)."""
    return value.decode() if isinstance(value, bytes) else value


def stream_id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    """``"1700000000000-3"`` → ``(1700000000000, 3)`` for ordering; ``"0"`` → ``(0, 0)``.

    Raises:
        ValueError: not a stream ID.
    """
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)
