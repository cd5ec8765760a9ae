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

Every Redis round trip is bounded by ``redis_timeout_s``.

Over 300 lines on purpose: the listener and the registry it reconciles on every reconnect; issue
7 splits them, with subscriber replay moving beside the subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from websockets.frames import CloseCode

from services.gateway import store
from services.gateway.outbox import Outbox
from services.gateway.sharded import open_pubsub
from services.gateway.subscribers import (
    PENDING_FACTOR,
    CallSubscriber,
    CallsWatcher,
    LiveMessage,
    Subscriber,
)
from shared import keys
from shared.cluster import ready
from shared.errors import ClientMessageError, RedisUnavailable
from shared.redisconn import connect, stream_id_tuple
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.schema import CallMeta, ErrorEvent

log = logging.getLogger(__name__)

_REDIS_ERRORS = REDIS_FAILURES


class _Channel:
    """One pub/sub channel and its local subscribers; ``call_sid`` None = ``cs:calls:events``."""

    __slots__ = ("call_sid", "channels", "confirmed", "name", "subs")

    def __init__(self, name: str, call_sid: str | None, channels: int = 2) -> None:
        self.name = name
        self.call_sid = call_sid
        self.channels = channels
        self.subs: set[Subscriber] = set()
        self.confirmed = asyncio.Event()


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
        self._ps_client: aioredis.Redis = connect(
            redis_url, socket_timeout_s=socket_timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self.redis_timeout_s = redis_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._ping_interval_s = ping_interval_s
        self._pending_max = PENDING_FACTOR * client_queue_max
        self._channels: dict[str, _Channel] = {}
        self._inflight: Counter[str] = Counter()
        self._commands: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pubsub: Any = None
        self._broken = False
        self._epoch = 0
        self._tg: asyncio.TaskGroup | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.redis_errors = 0  # pub/sub connections lost or refused, and failed replays

    # ------------------------------------------------------------------ public API

    @property
    def subscribed_channels(self) -> int:
        """Pub/sub channels this process holds now."""
        return len(self._channels)

    async def run(self) -> None:
        """Listen and fan out until cancelled; closes both Redis clients on the way out."""
        try:
            await ready(self.redis)
            await ready(self._ps_client)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._listen_forever(), name="hub-listener")
                tg.create_task(self._send_commands(), name="hub-commands")
        finally:
            self._tg = None
            for client in (self.redis, self._ps_client):
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
            self._commands.put_nowait(("unsubscribe", name))

    # ------------------------------------------------------------------ registry and commands

    def _join(self, name: str, call_sid: str | None, sub: Subscriber) -> _Channel:
        if self._tg is None:
            raise RedisUnavailable("the hub is not running")
        ch = self._channels.get(name)
        if ch is None:
            ch = self._channels[name] = _Channel(name, call_sid)
            self._commands.put_nowait(("subscribe", name))
        ch.subs.add(sub)
        return ch

    async def _send_commands(self) -> None:
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

    # ------------------------------------------------------------------ the listener

    async def _listen_forever(self) -> None:
        backoff = Backoff(self._reconnect_min_s, self._reconnect_max_s)
        first = True
        while True:
            ps = open_pubsub(self._ps_client, self._socket_timeout_s)
            try:
                names = list(self._channels)
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
                for ch in self._channels.values():
                    for sub in ch.subs:
                        self._ensure_resync(sub, ch)
                await self._read(ps)
            except _REDIS_ERRORS as exc:
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
                with contextlib.suppress(*_REDIS_ERRORS):
                    async with asyncio.timeout(self.redis_timeout_s):
                        await ps.aclose()
            await backoff.wait()

    def _reconcile(self, subscribed: list[str]) -> None:
        """Queue the commands dropped while connecting: the registry may have changed after the
        ``subscribed`` snapshot was sent (a client attached or detached meanwhile)."""
        sent = set(subscribed)
        for name in self._channels.keys() - sent:
            self._commands.put_nowait(("subscribe", name))
        for name in sent - self._channels.keys():
            self._commands.put_nowait(("unsubscribe", name))

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
        kind = msg["type"]
        if kind == "pong":
            return
        raw_name = msg["channel"]
        name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
        ch = self._channels.get(name)
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

    def _dispatch(self, ch: _Channel, data: bytes) -> None:
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

    def _on_outage(self) -> None:
        """Redis is gone: everything goes back to syncing and ``/v1/ws`` clients are told."""
        self._epoch += 1
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

    def _ensure_resync(self, sub: Subscriber, ch: _Channel) -> None:
        if sub.closed or self._tg is None:
            return
        if sub.resync_task is None or sub.resync_task.done():
            sub.resync_task = self._tg.create_task(self._resync(sub, ch), name="hub-resync")

    async def _resync(self, sub: Subscriber, ch: _Channel) -> None:
        """Bring one subscriber from syncing to live, retrying through Redis outages."""
        backoff = Backoff(self._reconnect_min_s, self._reconnect_max_s)
        sid = ch.call_sid
        try:
            while not sub.closed and sub.pending is not None and sub.outbox.closing is None:
                await ch.confirmed.wait()
                try:
                    async with sub.lock:
                        await self._sync(sub, ch)
                except RedisUnavailable as exc:
                    self.redis_errors += 1
                    log.warning("replay failed", extra={"call_sid": sid, "error": str(exc)})
                    await backoff.wait()
        except Exception:
            log.exception("subscriber sync crashed", extra={"call_sid": sid})
            sub.outbox.close(CloseCode.INTERNAL_ERROR, "internal error", drain=False)

    async def _sync(self, sub: Subscriber, ch: _Channel) -> bool:
        """Replay what the subscriber is missing, then drain its buffer and go live.

        Returns False when it has to be done again (Redis was lost meanwhile) or the client is
        closing. Raises RedisUnavailable.
        """
        epoch, r, t = self._epoch, self.redis, self.redis_timeout_s
        if isinstance(sub, CallsWatcher):
            calls = await store.active_calls(r, t)
            if epoch != self._epoch:
                return False
            sub.outbox.put(store.calls_message(sub.visible(calls)))
            sub.drain_pending()
            return True
        if not isinstance(sub, CallSubscriber) or ch.call_sid is None:
            raise TypeError("unknown subscriber kind")
        sid = ch.call_sid
        _, ch.channels, ended = await store.call_info(r, sid, t)
        if sub.cursor is None:
            sub.cursor = await store.last_history_id(r, sid, t)
        replayed = 0
        while True:
            page = await store.history_page(r, sid, sub.cursor, t)
            for entry_id, fields in page:
                if not sub.outbox.has_space() and not await sub.outbox.wait_space():
                    return False
                try:
                    msg = LiveMessage.from_history(entry_id, fields, ch.channels)
                except ValueError:
                    log.warning("bad history entry skipped", extra={"call_sid": sid})
                    sub.cursor = stream_id_tuple(entry_id)
                    continue
                sub.deliver(msg)
                replayed += 1
            if len(page) < store.HISTORY_PAGE:
                break
        if epoch != self._epoch or sub.closed:
            return False
        sub.drain_pending()
        if ended and not sub.ended:
            sub.deliver(LiveMessage.end(sid))
        log.info("subscriber live", extra={"call_sid": sid, "replayed": replayed})
        return True
