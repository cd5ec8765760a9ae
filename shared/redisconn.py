"""Opening Redis: a real server from ``REDIS_URL``, or ``memory://`` for single-process mode.

``memory://`` gives an in-process fakeredis; every connection opened in one process shares one
fake server, so ingest, transcriber and gateway running in one process (``callscribe demo``) see
the same keys. It cannot be shared between processes.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

_fake_servers: dict[str, Any] = {}


def is_memory(url: str) -> bool:
    """True for ``memory://`` URLs (single-process fakeredis)."""
    return url.startswith("memory://")


def connect(url: str, *, socket_timeout_s: float = 30.0, **kwargs: Any) -> aioredis.Redis:
    """Return a ``redis.asyncio.Redis`` for ``url`` with responses as bytes.

    ``socket_timeout_s`` is set explicitly (redis-py 8 defaults to 5 s) and must be longer than
    any ``BLOCK`` the caller uses. ``health_check_interval`` keeps idle pub/sub sockets honest.
    """
    if is_memory(url):
        import fakeredis

        server = _fake_servers.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(server=server, **kwargs)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=15,
        retry_on_timeout=False,
        **kwargs,
    )


def stream_id_tuple(entry_id: str | bytes) -> tuple[int, int]:
    """``"1700000000000-3"`` → ``(1700000000000, 3)`` for ordering; ``"0"`` → ``(0, 0)``.

    Raises:
        ValueError: not a stream ID.
    """
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)
