"""Webhooks: ``call_started``, each final (optional) and ``call_ended`` POSTed to ``WEBHOOK_URLS``.

Durable outbox: with webhooks configured, the transcriber adds one entry to the stream
``cs:{p}:webhooks`` of the call's partition (:func:`enqueue`) inside the transactions it already runs: the claim of a call
(``call_started``), each final's XADD (``final``, with ``WEBHOOK_FINALS``) and the end
(``call_ended``). The :class:`Notifier` of every transcriber reads that stream through the
consumer group ``notifiers`` and POSTs each entry to every URL, so delivery never blocks the
pipeline and survives the death of the worker that took it (its pending entries are claimed by
another after :data:`CLAIM_IDLE_MS`; a live notifier keeps re-claiming the entries it is
delivering, so one still being retried is not taken over).

At least once: an entry is acknowledged only once every URL answered 2xx or ran out of
``WEBHOOK_MAX_ATTEMPTS`` tries (backoff with jitter, 1 s doubling to 60 s; one error line when
dropped). A receiver deduplicates on ``Callscribe-Idempotency-Key`` (``<sid>:call_started``,
``<sid>:final:<segment>``, ``<sid>:call_ended``), identical on every retry and takeover.

Signature (as Stripe's): ``Callscribe-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>``
is HMAC-SHA256 with ``WEBHOOK_SECRET`` of ``"<t>." + body`` (the raw request body bytes).
A receiver recomputes it, compares in constant time and refuses a ``t`` too far from now
(:func:`verify`). Payload: ``{"type", "id" (the idempotency key), "call": CallSummary}`` plus
``"final"`` (a ``transcript`` event) or ``"transcript"`` (every final, for ``call_ended``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from shared import keys
from shared.aio import cancel_and_wait
from shared.cluster import partition_groups
from shared.history import summarize
from shared.redisconn import as_text
from shared.replies import StreamFields, autoclaimed, batches, entries
from shared.retry import REDIS_FAILURES, Backoff, cmd
from shared.schema import CallMeta, TranscriptEvent
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

CLAIM_IDLE_MS = 120_000
"""A delivery pending this long (its notifier died) is claimed by another, ms."""

CONCURRENCY = 32
"""Deliveries in flight per notifier at most."""

OUTBOX_MAXLEN = 100_000
"""Approximate MAXLEN of each ``cs:{p}:webhooks`` stream (deliveries waiting)."""

TOLERANCE_S = 300.0
"""How far a signature's timestamp may be from the receiver's clock (:func:`verify`), s."""


def urls(settings: TranscriberSettings) -> list[str]:
    """The configured webhook URLs (empty: webhooks off)."""
    return [u.strip() for u in settings.webhook_urls.split(",") if u.strip()]


def enqueue(pipe: Pipeline, event: str, call_sid: str, key: str, payload: str = "") -> None:
    """Queue (in ``pipe``) one delivery: ``event`` of ``call_sid``, idempotency ``key``,
    ``payload`` = the final's JSON for ``final`` events (the rest is read at delivery)."""
    fields = {"event": event, "call_sid": call_sid, "key": key, "payload": payload}
    stream = keys.webhooks(keys.tag_of(call_sid))  # the call's partition: its MULTI's one slot
    pipe.xadd(stream, fields, maxlen=OUTBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]


def sign(secret: str, body: bytes, t: int) -> str:
    """The ``Callscribe-Signature`` header value for ``body`` sent at Unix second ``t``."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, now_s: float, tolerance_s: float = TOLERANCE_S
) -> bool:
    """What a receiver does: True when ``header`` signs ``body`` with ``secret`` and its ``t`` is
    within ``tolerance_s`` of ``now_s``."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
        fresh = abs(now_s - t) <= tolerance_s
    except (ValueError, KeyError, OverflowError):  # OverflowError: a ``t`` no float can hold
        return False
    v1 = parts.get("v1", "")
    if not v1.isascii():  # compare_digest raises TypeError on non-ASCII str
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return fresh and hmac.compare_digest(expected, v1)




class Notifier:
    """Delivers ``cs:{p}:webhooks`` entries as this transcriber's consumer (see module docstring)."""

    def __init__(self, settings: TranscriberSettings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.urls = urls(settings)
        secret = settings.webhook_secret
        self.secret = secret.get_secret_value() if secret is not None else ""
        self.delivered = 0
        self.dropped = 0
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """Read and deliver until cancelled; never raises on Redis or HTTP failures.

        One reader per group of outbox streams that one XREADGROUP can serve (all of them on a
        single Redis, one per partition on a cluster: :func:`shared.cluster.partition_groups`).
        """
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http, asyncio.TaskGroup() as tg:
            for tags in partition_groups(self.redis):
                tg.create_task(self._read_loop(http, tg, [keys.webhooks(t) for t in tags]))

    async def _read_loop(
        self, http: aiohttp.ClientSession, tg: asyncio.TaskGroup, streams: list[str]
    ) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._ensure_groups(streams)
                for stream, entry_id, fields in await self._next_entries(streams):
                    await self._slots.acquire()
                    tg.create_task(self._deliver(http, stream, as_text(entry_id), fields))
                backoff.reset()
            except REDIS_FAILURES as exc:
                await backoff.retry_after(exc, log, "redis unavailable", loop="webhooks")

    async def _ensure_groups(self, streams: list[str]) -> None:
        for stream in streams:
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                await cmd(
                    self.redis.xgroup_create(stream, keys.WEBHOOKS_GROUP, "0", mkstream=True)
                )

    async def _next_entries(self, streams: list[str]) -> list[tuple[str, bytes, StreamFields]]:
        """``(stream, entry ID, fields)`` of deliveries to make: stale ones first (XAUTOCLAIM),
        else new ones (XREADGROUP, blocking up to 1 s)."""
        consumer = self.settings.consumer
        found: list[tuple[str, bytes, StreamFields]] = []
        for stream in streams:
            claimed = await cmd(
                self.redis.xautoclaim(
                    stream, keys.WEBHOOKS_GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=16
                )
            )
            found += [(stream, eid, f) for eid, f in autoclaimed(claimed) if f]
        if found:
            return found
        reply = await cmd(
            self.redis.xreadgroup(
                keys.WEBHOOKS_GROUP, consumer, dict.fromkeys(streams, ">"), count=16, block=1000
            )
        )
        return [(as_text(name), eid, f) for name, batch in batches(reply) for eid, f in batch]

    async def _deliver(
        self, http: aiohttp.ClientSession, stream: str, entry_id: str, raw: dict[Any, Any]
    ) -> None:
        keep = asyncio.create_task(self._keep_claimed(stream, entry_id))
        try:
            fields = {as_text(k): as_text(v) for k, v in raw.items()}
            body = (await self._payload(fields)).encode()
            for url in self.urls:
                await self._post(http, url, fields, body)
            await cmd(self.redis.xack(stream, keys.WEBHOOKS_GROUP, entry_id))
            await cmd(self.redis.xdel(stream, entry_id))
        except REDIS_FAILURES as exc:  # left pending: delivered again after CLAIM_IDLE_MS
            log.warning("webhook not acknowledged", extra={"error": exc.__class__.__name__})
        finally:
            self._slots.release()
            await cancel_and_wait(keep)

    async def _keep_claimed(self, stream: str, entry_id: str) -> None:
        """Until cancelled, re-claim the entry being delivered (XCLAIM JUSTID: its idle time back
        to 0, its delivery count unchanged) every quarter of :data:`CLAIM_IDLE_MS`: retries last
        minutes, and an entry left idle would be claimed again by a notifier, this one included,
        and delivered twice at once. A failed round is left to the next."""
        while True:
            await asyncio.sleep(CLAIM_IDLE_MS / 4000)
            with contextlib.suppress(*REDIS_FAILURES):
                await cmd(
                    self.redis.xclaim(
                        stream,
                        keys.WEBHOOKS_GROUP,
                        self.settings.consumer,
                        min_idle_time=0,
                        message_ids=[entry_id],
                        justid=True,
                    )
                )

    async def _payload(self, f: dict[str, str]) -> str:
        sid, event = f.get("call_sid", ""), f.get("event", "")
        meta_fields, finals = await cmd(self.redis.hgetall(keys.meta(sid))), []
        try:
            meta = CallMeta.from_redis(meta_fields)
        except ValueError:
            meta = CallMeta(call_sid=sid, started_at=0.0)
        body: dict[str, Any] = {"type": event, "id": f.get("key", "")}
        if event == "final" and f.get("payload"):
            body["final"] = json.loads(f["payload"])
        if event == "call_ended":
            for entry_id, entry in entries(await cmd(self.redis.xrange(keys.transcript(sid)))):
                with contextlib.suppress(ValueError):
                    finals.append(
                        TranscriptEvent.from_history(entry_id, entry).model_dump(mode="json")
                    )
            body["transcript"] = finals
        summary = summarize(meta, len(finals), time.time())
        body["call"] = summary.model_dump(mode="json", by_alias=True)
        return json.dumps(body, separators=(",", ":"))

    async def _post(
        self, http: aiohttp.ClientSession, url: str, f: dict[str, str], body: bytes
    ) -> None:
        backoff = Backoff(base_s=1.0, cap_s=60.0)
        for attempt in range(1, self.settings.webhook_max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "Callscribe-Event": f.get("event", ""),
                "Callscribe-Idempotency-Key": f.get("key", ""),
                "Callscribe-Signature": sign(self.secret, body, int(time.time())),
            }
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                why = exc.__class__.__name__
            log.info(
                "webhook failed; retrying",
                extra={
                    "call_sid": f.get("call_sid"),
                    "event": f.get("event"),
                    "attempt": attempt,
                    "error": why,
                },
            )
            if attempt < self.settings.webhook_max_attempts:
                await backoff.wait()
        self.dropped += 1
        log.error(
            "webhook dropped after every attempt",
            extra={
                "call_sid": f.get("call_sid"),
                "event": f.get("event"),
                "url_host": urlsplit(url).netloc.rpartition("@")[2],  # no user:password
            },
        )
