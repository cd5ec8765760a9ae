"""The hub: one Redis pub/sub connection per gateway process, fanned out to local clients.

* One subscription per call, refcounted: ``SUBSCRIBE cs:{p}:<sid>:live`` when the first local
  subscriber of the call arrives, ``UNSUBSCRIBE`` after the last one leaves; ``cs:calls:events``
  while at least one ``list`` client exists. Commands go out in order through one task, and a
  channel counts as subscribed only once Redis has confirmed every command sent for it. On a
  Redis Cluster the same goes through sharded pub/sub (:mod:`services.gateway.sharded`).
* Each pub/sub message is parsed once (:class:`LiveMessage`) and handed to every subscriber of
  the channel without awaiting any of them (their :class:`Outbox` applies the slow-client policy).
* No gap, no duplicate: a new subscriber buffers live messages from the moment the subscription
  is confirmed, replays history after its cursor (``since``), then drains the buffer skipping
  finals at or before the newest one it got (:mod:`services.gateway.subscribers`).
* Supervised listener: when Redis drops or stops answering pings, the hub logs it, tells every
  ``/v1/ws`` subscriber (error event ``reconnecting``), puts every subscriber back into syncing,
  reconnects with exponential backoff and jitter, resubscribes everything, and replays each
  subscriber's history after the last final it got. Nothing hangs silently.

Every Redis round trip is bounded by ``redis_timeout_s``. This module holds the registry
(channels, their subscribers, attach and detach); the connection is
:class:`services.gateway.listener.Listener`'s and the replay
:class:`services.gateway.replay.Replayer`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.gateway import store
from services.gateway.listener import Channel, Listener
from services.gateway.outbox import Outbox
from services.gateway.replay import Replayer
from services.gateway.subscribers import (
    PENDING_FACTOR,
    CallSubscriber,
    CallsWatcher,
    Subscriber,
)
from shared import keys
from shared.cluster import ready
from shared.errors import ClientMessageError, RedisUnavailable
from shared.redisconn import connect, stream_id_tuple
from shared.retry import REDIS_FAILURES
from shared.schema import CallMeta, ErrorEvent

log = logging.getLogger(__name__)

_REDIS_ERRORS = REDIS_FAILURES


class Hub:
    """Fan-out of Redis pub/sub to local clients; run it with :meth:`run` (until cancelled).

    Times in seconds: ``redis_timeout_s`` bounds each Redis round trip, ``reconnect_min_s`` /
    ``reconnect_max_s`` the backoff between reconnects, ``ping_interval_s`` the idle time after
    which the listener pings Redis (no answer within 3 intervals = connection dead).
    ``client_queue_max`` (messages) sizes each syncing subscriber's buffer (x8).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        socket_timeout_s: float = 30.0,
        client_queue_max: int = 256,
        redis_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        ping_interval_s: float = 5.0,
        max_connections: int = 100,
    ) -> None:
        # a request finding every pooled connection busy waits (up to redis_timeout_s) for one
        # rather than failing with "Too many connections" while Redis is healthy
        self.redis: aioredis.Redis = connect(
            redis_url,
            socket_timeout_s=socket_timeout_s,
            retry=Retry(NoBackoff(), 1),
            pool_max_connections=max_connections,
            pool_timeout_s=redis_timeout_s,
        )
        self.redis_timeout_s = redis_timeout_s
        self._pending_max = PENDING_FACTOR * client_queue_max
        self._channels: dict[str, Channel] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.listener = Listener(
            connect(redis_url, socket_timeout_s=socket_timeout_s, retry=Retry(NoBackoff(), 0)),
            self._channels,
            socket_timeout_s=socket_timeout_s,
            redis_timeout_s=redis_timeout_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            ping_interval_s=ping_interval_s,
            on_connected=self._on_connected,
            on_outage=self._on_outage,
        )
        self.replay = Replayer(self.redis, redis_timeout_s, reconnect_min_s, reconnect_max_s)
        self.connected = self.listener.connected

    # ------------------------------------------------------------------ public API

    @property
    def reconnects(self) -> int:
        """Times the pub/sub connection was made again after a loss."""
        return self.listener.reconnects

    @property
    def redis_errors(self) -> int:
        """Pub/sub connections lost or refused, and failed replays."""
        return self.listener.redis_errors + self.replay.errors

    def confirmed(self, channel: str) -> bool:
        """True when Redis has confirmed our subscription to ``channel`` and nothing about it
        is in flight (tests and health: the hub has settled)."""
        ch = self._channels.get(channel)
        return self.listener.settled and ch is not None and ch.confirmed.is_set()

    @property
    def subscribed_channels(self) -> int:
        """Pub/sub channels this process holds now."""
        return len(self._channels)

    async def run(self) -> None:
        """Listen and fan out until cancelled; closes both Redis clients on the way out."""
        try:
            await ready(self.redis)
            await ready(self.listener.client)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.listener.listen_forever(), name="hub-listener")
                tg.create_task(self.listener.send_commands(), name="hub-commands")
        finally:
            self._tg = None
            for client in (self.redis, self.listener.client):
                with contextlib.suppress(*_REDIS_ERRORS):
                    await client.aclose()

    async def attach_call(
        self,
        call_sid: str,
        outbox: Outbox,
        *,
        since: str | None,
        deepgram: bool = False,
        greeting: str | None = None,
        on_end: Callable[[CallSubscriber], None] | None = None,
    ) -> CallSubscriber:
        """Subscribe ``outbox`` to a call: history after ``since`` (None = live only), then live.

        ``greeting`` (e.g. ``subscribed``) is queued before anything of the call.

        Raises:
            ClientMessageError: ``unknown_call`` (not active and no metadata) or ``bad_request``.
            RedisUnavailable: Redis did not answer within ``redis_timeout_s``.
        """
        try:
            cursor = stream_id_tuple(since) if since is not None else None
        except ValueError:
            raise ClientMessageError("bad_request", "since must be a stream ID") from None
        known, channels, _ = await store.call_info(self.redis, call_sid, self.redis_timeout_s)
        if not known:
            raise ClientMessageError("unknown_call", f"no call {call_sid[:64]!r}")
        if cursor is None:  # live only = every final after this moment, even before SUBSCRIBE lands
            cursor = await store.last_history_id(self.redis, call_sid, self.redis_timeout_s)
        if greeting is not None:
            outbox.put(greeting)
        sub = CallSubscriber(
            call_sid,
            outbox,
            since=cursor,
            deepgram=deepgram,
            pending_max=self._pending_max,
            on_end=on_end,
        )
        ch = self._join(keys.live(call_sid), call_sid, sub)
        ch.channels = channels
        self._ensure_resync(sub, ch)
        log.info("subscribed", extra={"call_sid": call_sid, "local_subscribers": len(ch.subs)})
        return sub

    def attach_watcher(
        self, outbox: Outbox, keep: Callable[[CallMeta], bool] | None = None
    ) -> CallsWatcher:
        """Push ``calls`` (a snapshot) then ``call_started``/``call_ended`` events to ``outbox``,
        only of the calls ``keep`` accepts (None: all)."""
        sub = CallsWatcher(outbox, self._pending_max, keep)
        ch = self._join(keys.CALL_EVENTS, None, sub)
        self._ensure_resync(sub, ch)
        return sub

    def detach(self, sub: Subscriber) -> None:
        """Remove a subscriber; unsubscribes the channel after its last local subscriber. Idempotent."""
        if sub.closed:
            return
        sub.closed = True
        task = sub.resync_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        name = keys.live(sub.call_sid) if isinstance(sub, CallSubscriber) else keys.CALL_EVENTS
        ch = self._channels.get(name)
        if ch is None or sub not in ch.subs:
            return
        ch.subs.discard(sub)
        if not ch.subs:
            del self._channels[name]
            self.listener.unsubscribe(name)

    # ------------------------------------------------------------------ registry and commands

    def _join(self, name: str, call_sid: str | None, sub: Subscriber) -> Channel:
        if self._tg is None:
            raise RedisUnavailable("the hub is not running")
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = Channel(name, call_sid)
            self.listener.subscribe(name)
        ch.subs.add(sub)
        return ch

    def _on_connected(self) -> None:
        """The listener (re)subscribed everything: every subscriber syncs."""
        for ch in self._channels.values():
            for sub in ch.subs:
                self._ensure_resync(sub, ch)

    def _on_outage(self) -> None:
        """Redis is gone: everything goes back to syncing and ``/v1/ws`` clients are told."""
        self.replay.outage()
        for ch in self._channels.values():
            ch.confirmed.clear()
            notice = None
            if ch.call_sid is not None:
                notice = ErrorEvent(
                    code="reconnecting",
                    message="lost Redis; missed finals will be replayed when it is back",
                    call_sid=ch.call_sid,
                ).to_json()
            for sub in ch.subs:
                was_live = sub.pending is None
                sub.enter_pending()
                if notice and was_live and not getattr(sub, "deepgram", True):
                    sub.outbox.put(notice)
                self._ensure_resync(sub, ch)

    # ------------------------------------------------------------------ syncing

    def _ensure_resync(self, sub: Subscriber, ch: Channel) -> None:
        if sub.closed or self._tg is None:
            return
        if sub.resync_task is None or sub.resync_task.done():
            sub.resync_task = self._tg.create_task(self.replay.resync(sub, ch), name="hub-resync")
