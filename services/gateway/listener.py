"""The hub's one pub/sub connection: kept alive, subscribed to what the registry holds, read.

* Commands go out in the order the registry changed (:meth:`Listener.subscribe`,
  :meth:`Listener.unsubscribe`) through one task, and a channel counts as subscribed only once
  Redis has confirmed every command sent for it (:attr:`Channel.confirmed`).
* Each message is parsed once (:class:`LiveMessage`; call events as text) and handed to every
  subscriber of its channel without awaiting any of them.
* Supervised: when Redis drops or stops answering pings (none within 3 ``ping_interval_s``),
  ``on_outage`` runs, the listener reconnects with exponential backoff and jitter, subscribes
  the registry as it is then, and ``on_connected`` runs. Every round trip is bounded by
  ``redis_timeout_s`` (s). On a cluster the connection is sharded pub/sub
  (:mod:`services.gateway.sharded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.gateway.sharded import open_pubsub
from services.gateway.subscribers import LiveMessage, Subscriber
from shared.retry import REDIS_FAILURES, Backoff, cmd

log = logging.getLogger(__name__)


class Channel:
    """One pub/sub channel and its local subscribers; ``call_sid`` None = the call events.

    ``channels``: the call's audio channel count (for the ``Results`` shape of ``/client``).
    """

    __slots__ = ("call_sid", "channels", "confirmed", "name", "subs")

    def __init__(self, name: str, call_sid: str | None, channels: int = 2) -> None:
        self.name = name
        self.call_sid = call_sid
        self.channels = channels
        self.subs: set[Subscriber] = set()
        self.confirmed = asyncio.Event()


class Listener:
    """Keeps ``client``'s pub/sub subscribed to the channels of ``registry`` (name → Channel,
    owned by the hub) and dispatches what arrives; run :meth:`send_commands` and
    :meth:`listen_forever` as tasks. Times in seconds."""

    def __init__(
        self,
        client: aioredis.Redis,
        registry: dict[str, Channel],
        *,
        socket_timeout_s: float,
        redis_timeout_s: float,
        reconnect_min_s: float,
        reconnect_max_s: float,
        ping_interval_s: float,
        on_connected: Callable[[], None],
        on_outage: Callable[[], None],
    ) -> None:
        self.client = client
        self.registry = registry
        self.redis_timeout_s = redis_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._ping_interval_s = ping_interval_s
        self._on_connected = on_connected
        self._on_outage = on_outage
        self._inflight: Counter[str] = Counter()
        self._commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pubsub: Any = None
        self._broken = False
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.redis_errors = 0  # pub/sub connections lost or refused

    @property
    def settled(self) -> bool:
        """True when Redis has confirmed every SUBSCRIBE/UNSUBSCRIBE sent so far."""
        return not self._inflight

    def subscribe(self, name: str) -> None:
        """Queue ``SUBSCRIBE name`` (sent in order; dropped while offline, see the module)."""
        self._commands.put_nowait(("subscribe", name))

    def unsubscribe(self, name: str) -> None:
        """Queue ``UNSUBSCRIBE name``."""
        self._commands.put_nowait(("unsubscribe", name))

    async def send_commands(self) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE in the order the registry changed; dropped while offline
        (the reconnect subscribes the registry as it is then)."""
        while True:
            verb, name = await self._commands.get()
            ps = self._pubsub
            if ps is None:
                continue
            self._inflight[name] += 1
            try:
                async with asyncio.timeout(self.redis_timeout_s):
                    if verb == "subscribe":
                        await cmd(ps.subscribe(name))
                    else:
                        await cmd(ps.unsubscribe(name))
            except Exception as exc:
                # Redis errors, and redis-py's own when the listener closed the connection under
                # the command (AttributeError on its writer, seen at shutdown).
                log.warning("pubsub command failed", extra={"error": exc.__class__.__name__})
                if ps is self._pubsub:
                    self._broken = True

    # ------------------------------------------------------------------ reading

    async def listen_forever(self) -> None:
        """Connect, subscribe the registry, read; reconnect after every failure, until cancelled."""
        backoff = Backoff(self._reconnect_min_s, self._reconnect_max_s)
        first = True
        while True:
            ps = open_pubsub(self.client, self._socket_timeout_s)
            try:
                names = list(self.registry)
                async with asyncio.timeout(self.redis_timeout_s):
                    await cmd(ps.connect())
                    self._inflight.clear()
                    self._inflight.update(names)
                    if names:
                        await cmd(ps.subscribe(*names))
                    await cmd(ps.ping())
                self._pubsub, self._broken = ps, False
                self._reconcile(names)
                self.connected.set()
                if not first:
                    self.reconnects += 1
                    log.info("redis pubsub reconnected", extra={"channels": len(names)})
                first = False
                backoff.reset()
                self._on_connected()
                await self._read(ps)
            except REDIS_FAILURES as exc:
                self.redis_errors += 1
                # one warning per outage (the start-up probe names the URL); the rest at debug
                log.log(
                    logging.WARNING if backoff.failures == 0 else logging.DEBUG,
                    "redis pubsub lost",
                    extra={"error": exc.__class__.__name__, "failures": backoff.failures + 1},
                )
            finally:
                was_connected = self._pubsub is ps
                self._pubsub = None
                self.connected.clear()
                task = asyncio.current_task()
                if was_connected and not (task is not None and task.cancelling()):
                    self._on_outage()  # not on shutdown: no new resync tasks in a closing group
                with contextlib.suppress(*REDIS_FAILURES):
                    async with asyncio.timeout(self.redis_timeout_s):
                        await ps.aclose()
            await backoff.wait()

    def _reconcile(self, subscribed: list[str]) -> None:
        """Queue the commands dropped while connecting: the registry may have changed after the
        ``subscribed`` snapshot was sent (a client attached or detached meanwhile)."""
        sent = set(subscribed)
        for name in self.registry.keys() - sent:
            self.subscribe(name)
        for name in sent - self.registry.keys():
            self.unsubscribe(name)

    async def _read(self, ps: Any) -> None:
        """Read messages until the connection fails; raises a Redis/OS/Timeout error then."""
        loop = asyncio.get_running_loop()
        poll_s = min(self._ping_interval_s, 1.0)
        last_seen = loop.time()
        pinged_at = last_seen
        while True:
            if self._broken:
                raise RedisError("a pub/sub command failed")
            msg = await cmd(ps.get_message(timeout=poll_s))
            now = loop.time()
            if msg is not None:
                last_seen = now
                self._handle(msg)
                continue
            if now - last_seen > 3 * self._ping_interval_s:
                raise TimeoutError("Redis did not answer pings")
            if now - max(last_seen, pinged_at) >= self._ping_interval_s:
                pinged_at = now
                async with asyncio.timeout(self.redis_timeout_s):
                    await ps.ping()

    def _handle(self, msg: dict[str, Any]) -> None:
        """One pub/sub reply: a message to dispatch, or a (un)subscribe confirmation."""
        kind = msg["type"]
        if kind == "pong":
            return
        raw_name = msg["channel"]
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        ch = self.registry.get(name)
        if kind == "message":
            if ch is not None:
                self._dispatch(ch, msg["data"])
        elif kind in ("subscribe", "unsubscribe"):
            left = self._inflight[name] - 1
            if left > 0:
                self._inflight[name] = left
            else:
                self._inflight.pop(name, None)
                if kind == "subscribe" and ch is not None:
                    ch.confirmed.set()

    def _dispatch(self, ch: Channel, data: bytes) -> None:
        if ch.call_sid is None:
            try:
                text = data.decode() if isinstance(data, bytes) else data
            except UnicodeDecodeError:
                log.warning("bad call event dropped", extra={"error": "UnicodeDecodeError"})
                return
            for sub in ch.subs:
                sub.on_message(text)
            return
        try:
            msg = LiveMessage.from_live(data, ch.channels)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "bad live message dropped",
                extra={"call_sid": ch.call_sid, "error": exc.__class__.__name__},
            )
            return
        for sub in ch.subs:
            sub.on_message(msg)
