"""The hub's pub/sub on a Redis Cluster: sharded channels (SSUBSCRIBE), one connection per node.

:class:`ShardedPubSub` looks to the hub like redis-py's ``PubSub`` (``connect``, ``subscribe``,
``unsubscribe``, ``ping``, ``get_message``, ``aclose``) so the hub's registry, confirmation
counting and reconnect logic stay the same on a single Redis and on a cluster:

* ``subscribe(name)`` sends ``SSUBSCRIBE name`` to the node owning the channel's slot, on that
  node's one pub/sub connection (a single-node client of :func:`shared.redisconn.connect`, with
  the cluster URL's username and password, so
  its pub/sub commands and reads are guarded against swallowed cancellations: a node holds the
  subscriptions of all the channels whose slots it owns). ``cs:calls:events`` is the logical
  name of the call-event channels: it subscribes every partition's ``cs:{p}:events``, confirms
  once all of them are, and their messages are reported as ``cs:calls:events``.
* A reader task per node queues what its connection receives; ``get_message`` takes from that
  queue, so one slow node never delays another's messages.
* A slot that moves away (resharding, failover) makes Redis end our subscriptions to its
  channels with an ``sunsubscribe`` we did not ask for; a node connection that fails does the
  same. Either raises from :meth:`ShardedPubSub.get_message` as a lost connection, so the hub
  reconnects: a new ``ShardedPubSub`` reads the slot map again, subscribes every channel on its
  owner now, and each subscriber replays history after the last final it got (no gap, no
  duplicate: the hub's usual path after an outage).

https://redis.io/docs/latest/develop/interact/pubsub/#sharded-pubsub
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import keys
from shared.redisconn import as_text, connect


class ShardedPubSub:
    """The hub's pub/sub connection to a cluster (see the module docstring).

    Args:
        cluster: the hub's ``RedisCluster`` (its slot map says which node owns a channel).
        socket_timeout_s: socket timeout of each node connection, s.
    """

    def __init__(self, cluster: RedisCluster, socket_timeout_s: float) -> None:
        self._cluster = cluster
        self._socket_timeout_s = socket_timeout_s
        self._nodes: dict[str, tuple[aioredis.Redis, Any, asyncio.Task[None]]] = {}
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._wanted: set[str] = set()  # shard channels we asked for and not yet left
        self._events_waiting: Counter[str] = Counter()  # confirmations owed for events

    async def connect(self) -> None:
        """Read the slot map again (the cluster may have changed since the last connection)."""
        await self._cluster.initialize()
        await self._cluster.nodes_manager.initialize()

    def _shards(self, name: str) -> list[str]:
        return [keys.events(t) for t in keys.TAGS] if name == keys.CALL_EVENTS else [name]

    async def _node_pubsub(self, channel: str) -> Any:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise RedisConnectionError(f"no node serves {channel}")
        entry = self._nodes.get(node.name)
        if entry is None:
            given = node.connection_kwargs  # the cluster URL's username and password
            auth = {k: given[k] for k in ("username", "password") if given.get(k)}
            client = connect(
                _node_url(node.host, int(node.port)),
                socket_timeout_s=self._socket_timeout_s,
                **auth,
            )
            ps = client.pubsub()
            ps.first_subscribe = asyncio.Event()  # type: ignore[attr-defined]  # our mark on redis-py's PubSub
            task = asyncio.create_task(self._pump(ps), name=f"pubsub-{node.name}")
            entry = self._nodes[node.name] = (client, ps, task)
        return entry[1]

    async def subscribe(self, *names: str) -> None:
        """SSUBSCRIBE each name's shard channels on their owners."""
        for name in names:
            shards = self._shards(name)
            if name == keys.CALL_EVENTS:
                self._events_waiting[name] += len(shards)
            for shard in shards:
                self._wanted.add(shard)
                ps = await self._node_pubsub(shard)
                await ps.ssubscribe(shard)
                ps.first_subscribe.set()

    async def unsubscribe(self, *names: str) -> None:
        """SUNSUBSCRIBE each name's shard channels."""
        for name in names:
            shards = self._shards(name)
            if name == keys.CALL_EVENTS:
                self._events_waiting[name] += len(shards)
            for shard in shards:
                self._wanted.discard(shard)
                await (await self._node_pubsub(shard)).sunsubscribe(shard)

    async def ping(self) -> None:
        """PING every subscribed node connection (each pong arrives as a ``pong`` message);
        with none subscribed, PING the cluster and queue the pong it answers."""
        subscribed = [ps for _, ps, _ in list(self._nodes.values()) if ps.subscribed]
        for ps in subscribed:
            await ps.ping()
        if not subscribed:
            await self._cluster.ping()
            self._queue.put_nowait({"type": "pong", "data": b""})

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109 (redis-py PubSub signature)
        """The next message of any node, as ``PubSub.get_message`` gives it, or None after
        ``timeout`` s.

        Raises:
            redis.exceptions.ConnectionError: a node connection failed, or a slot moved away.
        """
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return self._translate(item)

    def _translate(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        kind = as_text(msg["type"])
        if kind == "pong":
            return {"type": "pong", "channel": None, "data": msg.get("data")}
        channel = as_text(msg["channel"])
        if kind == "sunsubscribe" and channel in self._wanted:
            raise RedisConnectionError(f"subscription ended by the cluster: {channel}")
        name = keys.CALL_EVENTS if channel.endswith(":events") else channel
        plain = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}
        kind = plain.get(kind, kind)
        if name == keys.CALL_EVENTS and kind != "message":
            self._events_waiting[name] -= 1
            if self._events_waiting[name] % len(keys.TAGS):
                return None  # confirm the logical channel once all its shards are
        return {"type": kind, "channel": name, "data": msg.get("data")}

    async def _pump(self, ps: Any) -> None:
        """Queue every message of one node connection; queue the error that ends it."""
        try:
            await ps.first_subscribe.wait()  # nothing to read before the first SSUBSCRIBE
            while True:
                msg = await ps.get_message(timeout=1.0)
                if msg is not None:
                    self._queue.put_nowait(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait(exc)

    async def aclose(self) -> None:
        """Close every node connection."""
        for client, ps, task in self._nodes.values():
            task.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await ps.aclose()
                await client.aclose()
        self._nodes.clear()


def _node_url(host: str, port: int) -> str:
    """``redis://host:port`` of one cluster node (an IPv6 address in brackets)."""
    return f"redis://[{host}]:{port}" if ":" in host else f"redis://{host}:{port}"


def open_pubsub(client: aioredis.Redis, socket_timeout_s: float) -> Any:
    """The hub's pub/sub object: ``client.pubsub()``, or a :class:`ShardedPubSub` on a cluster."""
    if isinstance(client, RedisCluster):
        return ShardedPubSub(client, socket_timeout_s)
    return client.pubsub()
