"""Subscriber replay: a syncing subscriber gets what it missed from Redis, then goes live.

No gap, no duplicate: a subscriber buffers live messages from the moment its channel's
subscription is confirmed, :meth:`Replayer.sync` replays the call's history after its cursor
(``since``), then drains the buffer skipping finals at or before the newest one it got
(:mod:`services.gateway.subscribers`). A ``list`` watcher gets a fresh ``calls`` snapshot the
same way. Every replay started before a Redis outage (:meth:`Replayer.outage`) is done again
after it. Each Redis round trip is bounded by ``redis_timeout_s`` (s).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from websockets.frames import CloseCode

from services.gateway import store
from services.gateway.listener import Channel
from services.gateway.subscribers import CallSubscriber, CallsWatcher, LiveMessage, Subscriber
from shared.errors import RedisUnavailable
from shared.redisconn import stream_id_tuple
from shared.retry import Backoff

log = logging.getLogger(__name__)


class Replayer:
    """Runs subscribers' replays on ``redis``; ``errors`` counts failed ones (a metric)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        redis_timeout_s: float,
        reconnect_min_s: float,
        reconnect_max_s: float,
    ) -> None:
        self.redis = redis
        self.redis_timeout_s = redis_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self.epoch = 0
        self.errors = 0

    def outage(self) -> None:
        """Redis was lost: a replay in progress must be done again."""
        self.epoch += 1

    async def resync(self, sub: Subscriber, ch: Channel) -> None:
        """Bring one subscriber from syncing to live, retrying through Redis outages."""
        backoff = Backoff(self._reconnect_min_s, self._reconnect_max_s)
        sid = ch.call_sid
        try:
            while not sub.closed and sub.pending is not None and sub.outbox.closing is None:
                await ch.confirmed.wait()
                try:
                    async with sub.lock:
                        await self.sync(sub, ch)
                except RedisUnavailable as exc:
                    self.errors += 1
                    log.warning("replay failed", extra={"call_sid": sid, "error": str(exc)})
                    await backoff.wait()
        except Exception:
            log.exception("subscriber sync crashed", extra={"call_sid": sid})
            sub.outbox.close(CloseCode.INTERNAL_ERROR, "internal error", drain=False)

    async def sync(self, sub: Subscriber, ch: Channel) -> bool:
        """Replay what the subscriber is missing, then drain its buffer and go live.

        Returns False when it has to be done again (Redis was lost meanwhile) or the client is
        closing. Raises RedisUnavailable.
        """
        epoch, r, t = self.epoch, self.redis, self.redis_timeout_s
        if isinstance(sub, CallsWatcher):
            calls = await store.active_calls(r, t)
            if epoch != self.epoch:
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
        if epoch != self.epoch or sub.closed:
            return False
        sub.drain_pending()
        if ended and not sub.ended:
            sub.deliver(LiveMessage.end(sid))
        log.info("subscriber live", extra={"call_sid": sid, "replayed": replayed})
        return True
