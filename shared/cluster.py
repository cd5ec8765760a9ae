"""Redis Cluster support: the ``redis+cluster://`` client and the few commands that differ.

``REDIS_URL=redis+cluster://host:port[,host:port…]`` opens redis-py's asyncio
:class:`~redis.asyncio.cluster.RedisCluster` (https://redis.readthedocs.io/en/stable/clustering.html)
with the listed nodes as startup nodes; it follows ``MOVED`` and ``ASK`` redirections and
re-reads the slot map itself. Everything else in callscribe is written so that the same code runs
on a single Redis, on ``memory://`` and on a cluster:

* every transaction touches one hash slot (a call's keys and the partition structures it writes
  share the partition's hash tag, :mod:`shared.keys`);
* pipelines that are not transactions may span slots (redis-py splits them per node);
* a multi-key read (XREAD, XREADGROUP) is split per partition with :func:`partition_groups`;
* publishing differs (:func:`publish`, :func:`publish_call_event`): on a cluster every message
  goes out with ``SPUBLISH`` (sharded pub/sub, Redis 7: only the shard owning the channel's
  slot carries it, and a transaction may include it; a classic ``PUBLISH`` is broadcast to every
  node and has no key, so it cannot be part of a cluster transaction).
"""

from __future__ import annotations

import logging
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster

from shared import keys
from shared.retry import REDIS_FAILURES, Backoff, CancelGuard

log = logging.getLogger(__name__)

SCHEME = "redis+cluster://"
"""URL scheme of a Redis Cluster in ``REDIS_URL``."""


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` URLs."""
    return url.startswith(SCHEME)


def startup_nodes(url: str) -> list[tuple[str, int]]:
    """``redis+cluster://h1:p1,h2:p2`` → ``[("h1", p1), ("h2", p2)]`` (port 6379 if omitted).

    Raises:
        ValueError: not a ``redis+cluster://`` URL, or a port that is not a number.
    """
    if not is_cluster_url(url):
        raise ValueError(f"not a {SCHEME} URL")
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "6379")
        nodes.append((host or "127.0.0.1", int(port or 6379)))
    return nodes


class GuardedRedisCluster(CancelGuard, RedisCluster):  # type: ignore[misc]  # as GuardedRedis
    """``RedisCluster`` whose commands are guarded by :func:`shared.retry.cmd`: its
    ``execute_command`` is the entry of every single command, before the slot is looked up and
    the command routed, redirected or retried (the nodes' own ``execute_command`` is below it).
    Its ``ClusterPipeline`` is another class and queues as before."""


def connect_cluster(
    url: str, *, socket_timeout_s: float, max_connections: int | None = None, **kwargs: Any
) -> aioredis.Redis:
    """A :class:`GuardedRedisCluster` for ``url`` with bytes replies, typed as
    ``redis.asyncio.Redis``.

    The cluster client has the same command methods (the cast only spares every caller a
    union type). ``max_connections`` is per node (redis-py's default 100); a command that finds
    every connection of a node busy raises ``MaxConnectionsError`` (a ``RedisError``, retried
    by the callers' backoff) instead of waiting. ``health_check_interval`` as for a single Redis.
    """
    user = urlsplit(url)
    client = GuardedRedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in startup_nodes(url)],
        username=user.username or None,
        password=user.password or None,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=15,
        max_connections=max_connections or 100,
        **kwargs,
    )
    parser = client.commands_parser
    parser._get_moveable_keys = _local_stream_keys(parser._get_moveable_keys)  # type: ignore[method-assign]
    return cast(aioredis.Redis, client)


def _local_stream_keys(ask_server: Any) -> Any:
    """redis-py finds the keys of a command flagged ``movablekeys`` (XREAD, XREADGROUP) by asking
    a server (``COMMAND GETKEYS``) before every such command: measured with
    benchmarks/redis_commands.py, two extra round trips per audio read, all on one node (a
    third of the cluster's commands). The keys of XREAD and XREADGROUP are the first half of
    what follows ``STREAMS``; this reads them locally and asks the server for anything else."""

    async def get_keys(*args: Any) -> Any:
        name = str(args[0]).upper() if args else ""
        if name in ("XREAD", "XREADGROUP"):
            words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
            try:
                at = [w.upper() for w in words].index("STREAMS")
            except ValueError:
                return await ask_server(*args)
            rest = args[at + 1 :]
            return list(rest[: len(rest) // 2])
        return await ask_server(*args)

    return get_keys


def is_cluster(client: object) -> bool:
    """True for a ``RedisCluster`` or one of its pipelines."""
    return isinstance(client, RedisCluster | ClusterPipeline)


def publish(target: Any, channel: str, payload: str) -> Any:
    """``PUBLISH`` on a single Redis, ``SPUBLISH`` on a cluster; ``target`` is a client or a
    pipeline (then the command is queued and its reply comes with the pipeline's)."""
    if is_cluster(target):
        return target.execute_command("SPUBLISH", channel, payload)
    return target.publish(channel, payload)


def publish_call_event(target: Any, call_sid: str, payload: str) -> Any:
    """Publish a ``call_*`` event: ``cs:calls:events`` on a single Redis, the call partition's
    sharded channel ``cs:{p}:events`` on a cluster (so it fits the call's transactions)."""
    if is_cluster(target):
        return target.execute_command("SPUBLISH", keys.events(keys.tag_of(call_sid)), payload)
    return target.publish(keys.CALL_EVENTS, payload)


def event_channels(client: object) -> list[str]:
    """The channels carrying call events: one classic channel, or every partition's on a cluster."""
    if is_cluster(client):
        return [keys.events(t) for t in keys.TAGS]
    return [keys.CALL_EVENTS]


def partition_groups(client: object) -> list[list[str]]:
    """The partition tags split so that each group's keys can go in one multi-key command
    (XREAD, XREADGROUP): one group of all :data:`shared.keys.TAGS` on a single Redis or
    ``memory://``, one group per partition on a cluster (each partition is one hash slot)."""
    if is_cluster(client):
        return [[tag] for tag in keys.TAGS]
    return [list(keys.TAGS)]


async def ready(client: object) -> None:
    """On a cluster, read the slot map now, retrying with backoff until a node answers; no-op
    otherwise. Call it once before the first commands of concurrent tasks: redis-py 8.1's
    ``RedisCluster`` initialises lazily on its first command, and several commands racing through
    that first initialisation lost connections under one another (``Connection closed by
    server``, a closed transport) in our tests.
    """
    if not isinstance(client, RedisCluster):
        return
    backoff = Backoff()
    while True:
        try:
            await client.initialize()
            return
        except REDIS_FAILURES as exc:
            await backoff.retry_after(exc, log, "redis cluster unavailable")
