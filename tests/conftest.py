"""Shared fixtures: a real redis-server for the session, a clean database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings

from shared.redisconn import connect
from tests.recordings import DATA_DIR
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent

# Property tests judge the code, not the machine: on a shared, busy CI box example generation
# can be slow, which Hypothesis would otherwise report as a failure (too_slow, deadline).
settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shared-machine")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server on a free port for the whole session."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on free ports for the whole session (started on first use)."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[str]:
    """The session server's URL, flushed before each test.

    Parametrized indirectly with ``"cluster"`` (``@pytest.mark.parametrize("redis_url",
    ["single", "cluster"], indirect=True)``) it is the session's 3-master cluster instead, every
    master flushed: the same test body runs on both.
    """
    if getattr(request, "param", "single") == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        yield cluster.url
        return
    if redis_server.proc is None:  # a fault test left it stopped
        redis_server.start()
    r = connect(redis_server.url)
    await r.flushall()
    await r.aclose()
    yield redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the session server (bytes responses)."""
    r = connect(redis_url)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture
def audio_dir() -> Path:
    """``tests/data``: the recordings' references (``<name>.json``, ``<name>.txt``) and WAVs.

    Fails (never skips) when it is missing. Open a WAV with :func:`tests.recordings.wav`: the
    demo's call lives in the package, not here.
    """
    assert DATA_DIR.is_dir(), f"recordings not found at {DATA_DIR}"
    return DATA_DIR
