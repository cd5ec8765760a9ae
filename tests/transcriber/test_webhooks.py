"""Webhooks: signed, retried, at least once, from the transcriber's own transactions."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from services.transcriber import webhooks
from services.transcriber.webhooks import Notifier, enqueue, sign, verify
from shared import keys
from shared.aio import cancel_and_wait
from shared.retry import Backoff
from shared.schema import CallMeta, TranscriptEvent
from shared.settings import TranscriberSettings
from tests.transcriber.dgutil import settings
from tests.transcriber.scripted import serve_call

SID = "CA00000000000000000000000000000079"
SECRET = "s3cret"


class Receiver:
    """A real HTTP receiver on 127.0.0.1:0 that verifies each signature, fails each key's first
    POST with 500 (so every delivery is retried) and keeps what it accepted."""

    def __init__(self) -> None:
        self.accepted: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.refused_once: set[str] = set()
        self.bad_signatures = 0
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, body, request.headers["Callscribe-Signature"], time.time()):
            self.bad_signatures += 1
            return web.Response(status=401)
        key = request.headers["Callscribe-Idempotency-Key"]
        if key not in self.refused_once:
            self.refused_once.add(key)
            return web.Response(status=500)
        self.accepted.append((dict(request.headers), json.loads(body)))
        self.got.set()
        return web.Response(status=204)


async def test_call_started_final_and_call_ended_are_delivered_signed_after_a_retry(
    redis: aioredis.Redis,
) -> None:
    """The claim, a final and the end each enqueue a delivery in their transaction; the notifier
    POSTs them with a signature the receiver verifies, retries a 500, and acks once delivered."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0]
    url = f"http://{host}:{port}/hook"
    cfg = settings(webhook_urls=url, webhook_secret=SECRET, webhook_finals=True, consumer="n1")
    meta = CallMeta(call_sid=SID, started_at=time.time() - 10, **{"from": "+15550001111"})
    await redis.hset(keys.meta(SID), mapping=meta.to_redis())
    await redis.sadd(keys.active(keys.tag_of(SID)), SID)
    final = TranscriptEvent(
        call_sid=SID, segment=0, channel=0, speaker="caller", is_final=True,
        start=0.5, end=2.0, text="Thursday at three works.",
    )  # fmt: skip
    await serve_call(redis, SID, [final], cfg)
    notifier = asyncio.create_task(Notifier(cfg, redis).run())
    try:
        async with asyncio.timeout(20):
            while len(receiver.accepted) < 3:
                receiver.got.clear()
                await receiver.got.wait()
            # acknowledged and deleted after delivery: a state in Redis, no event to await
            while await redis.xlen(keys.webhooks(keys.tag_of(SID))):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        notifier.cancel()
        await asyncio.gather(notifier, return_exceptions=True)
        await runner.cleanup()
    assert receiver.bad_signatures == 0
    by_event = {h["Callscribe-Event"]: (h, b) for h, b in receiver.accepted}
    assert set(by_event) == {"call_started", "final", "call_ended"}
    headers, ended = by_event["call_ended"]
    assert headers["Callscribe-Idempotency-Key"] == f"{SID}:call_ended"
    assert ended["call"]["status"] == "ended" and ended["call"]["from"] == "+15550001111"
    assert [f["text"] for f in ended["transcript"]] == ["Thursday at three works."]
    assert by_event["final"][1]["final"]["text"] == "Thursday at three works."
    assert by_event["call_started"][1]["id"] == f"{SID}:call_started"
    assert not verify(SECRET, b"tampered", headers["Callscribe-Signature"], time.time())


# --- failure paths, several URLs, takeover, the receiver's check ------------------------------

OTHER = "CA00000000000000000000000000000080"


@dataclass
class Post:
    """One POST a :class:`Hook` received, and its answer (None: left hanging)."""

    key: str
    event: str
    body: dict[str, Any]
    signed: bool
    status: int | None = None


class Hook:
    """A real receiver (``POST /hook`` on 127.0.0.1, port 0, see :func:`serving`) that keeps every
    POST in arrival order and answers the ``n``-th POST of a key with ``answer(key, n)``: a
    status, or None to hang without answering until :attr:`release` is set."""

    def __init__(self, answer: Callable[[str, int], int | None] = lambda key, n: 204) -> None:
        self.answer = answer
        self.posts: list[Post] = []
        self.changed = asyncio.Condition()
        self.release = asyncio.Event()
        self.url = ""
        self.timeline: list[str] | None = None  # when set, gets "post" per POST

    def count(self, key: str) -> int:
        """POSTs received with idempotency key ``key``."""
        return sum(p.key == key for p in self.posts)

    def accepted(self) -> set[str]:
        """Keys of the POSTs answered 2xx."""
        return {p.key for p in self.posts if p.status is not None and 200 <= p.status < 300}

    async def until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` is true (checked on each POST)."""
        async with self.changed:
            await self.changed.wait_for(done)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        key = headers.get("Callscribe-Idempotency-Key", "")
        post = Post(
            key,
            headers.get("Callscribe-Event", ""),
            json.loads(body),
            verify(SECRET, body, headers.get("Callscribe-Signature", ""), time.time()),
        )
        async with self.changed:
            self.posts.append(post)
            if self.timeline is not None:
                self.timeline.append("post")
            post.status = self.answer(key, self.count(key))
            self.changed.notify_all()
        if post.status is None:
            await self.release.wait()
        return web.Response(status=post.status or 503)


@asynccontextmanager
async def serving(*hooks: Hook) -> AsyncIterator[None]:
    """Serve each hook on its own port (sets its ``url``) until the block ends; hanging POSTs are
    released before the servers stop."""
    runners = []
    try:
        for hook in hooks:
            app = web.Application()
            app.router.add_post("/hook", hook.handle)
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0]
            hook.url = f"http://{host}:{port}/hook"
        yield
    finally:
        for hook in hooks:
            hook.release.set()
        for runner in runners:
            await runner.cleanup()


@asynccontextmanager
async def notifying(cfg: TranscriberSettings, redis: aioredis.Redis) -> AsyncIterator[Notifier]:
    """A running :class:`Notifier`, cancelled (as a dying transcriber's is) when the block ends."""
    notifier = Notifier(cfg, redis)
    task = asyncio.create_task(notifier.run())
    try:
        yield notifier
    finally:
        await cancel_and_wait(task)


class Backoffs:
    """Stands in for ``webhooks.Backoff`` (installed by the ``backoffs`` fixture): each instance
    is the real :class:`~shared.retry.Backoff` with the base and cap the module asks for (its
    delays, doubling, jitter and cap are the real ones, kept in ``delays``), but ``wait()`` sleeps
    a thousandth of the delay, or, with :attr:`gate` set, waits for the gate instead."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.timeline: list[str] = []
        self.gate: asyncio.Event | None = None
        self.waiting = asyncio.Event()

    def __call__(self, base_s: float = 0.05, cap_s: float = 2.0) -> Backoff:
        outer = self

        class Quick(Backoff):
            async def wait(self) -> float:
                delay = self.next_delay_s()
                outer.delays.append(delay)
                outer.timeline.append("wait")
                outer.waiting.set()
                if outer.gate is not None:
                    await outer.gate.wait()
                else:
                    await asyncio.sleep(delay / 1000)
                return delay

        return Quick(base_s, cap_s)


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> Backoffs:
    """The webhooks' retry backoff, recorded and a thousand times quicker (:class:`Backoffs`)."""
    fake = Backoffs()
    monkeypatch.setattr(webhooks, "Backoff", fake)
    return fake


async def start_meta(redis: aioredis.Redis, sid: str) -> None:
    """Write the meta of a call that started 10 s ago (the payload's ``call`` is read from it)."""
    meta = CallMeta(call_sid=sid, started_at=time.time() - 10, **{"from": "+15550001111"})
    await redis.hset(keys.meta(sid), mapping=meta.to_redis())


async def queue(redis: aioredis.Redis, event: str, sid: str) -> str:
    """Queue one delivery as the transcriber's transactions do (:func:`enqueue`); its key."""
    key = f"{sid}:{event}"
    async with redis.pipeline(transaction=True) as pipe:
        enqueue(pipe, event, sid, key)
        await pipe.execute()
    return key


async def pending(redis: aioredis.Redis, sid: str) -> list[dict[str, Any]]:
    """The outbox entries of ``sid``'s partition delivered to a notifier and not acknowledged."""
    return await redis.xpending_range(
        keys.webhooks(keys.tag_of(sid)), keys.WEBHOOKS_GROUP, min="-", max="+", count=100
    )


async def drained(redis: aioredis.Redis, sid: str) -> None:
    """Return once ``sid``'s partition outbox is empty, nothing pending: all acknowledged."""
    stream = keys.webhooks(keys.tag_of(sid))
    # acknowledged and deleted: a state in Redis, no event to await
    while await redis.xlen(stream) or await pending(redis, sid):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    """The webhooks module's log records with ``message``."""
    return [
        r for r in caplog.records if r.name == webhooks.__name__ and r.getMessage() == message
    ]


async def stored_texts(redis: aioredis.Redis, sid: str) -> list[str]:
    """The text of each final stored in the call's transcript stream."""
    return [
        TranscriptEvent.from_history(entry_id, fields).text
        for entry_id, fields in await redis.xrange(keys.transcript(sid))
    ]


def finals(sid: str, texts: list[str]) -> list[TranscriptEvent]:
    """One caller final per text, two seconds each."""
    return [
        TranscriptEvent(
            call_sid=sid,
            segment=i,
            channel=0,
            speaker="caller",
            is_final=True,
            start=2.0 * i,
            end=2.0 * i + 1.5,
            text=text,
        )
        for i, text in enumerate(texts)
    ]


async def test_a_receiver_that_always_fails_gets_max_attempts_then_the_delivery_is_dropped(
    redis: aioredis.Redis, backoffs: Backoffs, caplog: pytest.LogCaptureFixture
) -> None:
    """Every answer a 500: WEBHOOK_MAX_ATTEMPTS POSTs, one "retrying" line each, then the entry
    is acknowledged and deleted from the outbox (no dead letter) with one error line naming the
    URL's host, never its credentials."""
    caplog.set_level(logging.INFO, logger=webhooks.__name__)
    hook = Hook(answer=lambda key, n: 500)
    await start_meta(redis, SID)
    async with serving(hook):
        url = hook.url.replace("http://", "http://user:pa55word@")
        cfg = settings(webhook_urls=url, webhook_secret=SECRET, webhook_max_attempts=3)
        key = await queue(redis, "call_started", SID)
        async with asyncio.timeout(10), notifying(cfg, redis) as notifier:
            await hook.until(lambda: hook.count(key) == 3)
            await drained(redis, SID)
    assert hook.count(key) == 3 and all(p.signed for p in hook.posts)
    assert (notifier.delivered, notifier.dropped) == (0, 1)
    assert await redis.xlen(keys.webhooks(keys.tag_of(SID))) == 0
    failed = records(caplog, "webhook failed; retrying")
    assert [(r.attempt, r.error, r.event, r.call_sid) for r in failed] == [  # type: ignore[attr-defined]
        (n, "HTTP 500", "call_started", SID) for n in (1, 2, 3)
    ]
    [dropped] = records(caplog, "webhook dropped after every attempt")
    assert dropped.levelno == logging.ERROR
    host = hook.url.split("/")[2]
    assert (dropped.call_sid, dropped.event, dropped.url_host) == (SID, "call_started", host)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if "pa55word" in str(r.__dict__)]
    assert len(backoffs.delays) == 2  # one wait between each two attempts, none after the last


async def test_backoff_between_attempts_doubles_from_1_s_with_jitter_up_to_60_s(
    redis: aioredis.Redis, backoffs: Backoffs
) -> None:
    """Nine failing attempts: a wait between each two, the n-th drawn between half and all of
    ``min(60, 2**(n-1))`` s (the delays the module's backoff computed, slept a thousand times
    quicker here)."""
    hook = Hook(answer=lambda key, n: 500)
    hook.timeline = backoffs.timeline
    await start_meta(redis, SID)
    async with serving(hook):
        cfg = settings(webhook_urls=hook.url, webhook_secret=SECRET, webhook_max_attempts=9)
        key = await queue(redis, "call_ended", SID)
        async with asyncio.timeout(10), notifying(cfg, redis) as notifier:
            await hook.until(lambda: hook.count(key) == 9)
            await drained(redis, SID)
    assert notifier.dropped == 1
    assert backoffs.timeline == ["post", "wait"] * 8 + ["post"]
    nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert all(n / 2 <= d <= n for d, n in zip(backoffs.delays, nominal, strict=True)), (
        backoffs.delays
    )
    assert backoffs.delays[:6] == sorted(backoffs.delays[:6])  # grows until the cap


async def test_each_url_receives_each_event(redis: aioredis.Redis, backoffs: Backoffs) -> None:
    """Two URLs (spaces around the comma): each gets call_started, every final and call_ended,
    the same signed body for the same key, each retried on its own (the first POST of each key
    fails at both)."""

    def first_fails(key: str, n: int) -> int:
        return 500 if n == 1 else 204

    a, b = Hook(first_fails), Hook(first_fails)
    await start_meta(redis, SID)
    await redis.sadd(keys.active(keys.tag_of(SID)), SID)
    events = finals(SID, ["Thursday at three works.", "See you then."])
    want = {f"{SID}:call_started", f"{SID}:final:0", f"{SID}:final:1", f"{SID}:call_ended"}
    async with serving(a, b):
        cfg = settings(
            webhook_urls=f" {a.url} , {b.url} ", webhook_secret=SECRET, webhook_finals=True
        )
        await serve_call(redis, SID, events, cfg)
        async with asyncio.timeout(10), notifying(cfg, redis) as notifier:
            await a.until(lambda: a.accepted() == want)
            await b.until(lambda: b.accepted() == want)
            await drained(redis, SID)
    assert notifier.delivered == 8 and notifier.dropped == 0
    for hook in (a, b):
        assert all(p.signed for p in hook.posts)
        assert sorted(p.key for p in hook.posts) == sorted([*want, *want])  # one 500, one 204
    bodies_a = {p.key: p.body for p in a.posts}
    bodies_b = {p.key: p.body for p in b.posts}
    assert bodies_a == bodies_b
    assert [f["text"] for f in bodies_a[f"{SID}:call_ended"]["transcript"]] == [
        "Thursday at three works.",
        "See you then.",
    ]


async def test_a_hanging_receiver_does_not_hold_up_the_call(
    redis: aioredis.Redis, backoffs: Backoffs, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that never answers: while a POST hangs, the call is served and its finals are
    stored and published on the live channel; each POST gives up after WEBHOOK_TIMEOUT_S and,
    after its attempts, the delivery is dropped."""
    caplog.set_level(logging.INFO, logger=webhooks.__name__)
    hook = Hook(answer=lambda key, n: None)
    await start_meta(redis, SID)
    await redis.sadd(keys.active(keys.tag_of(SID)), SID)
    events = finals(SID, ["Thursday at three works.", "See you then."])
    live = redis.pubsub()
    await live.subscribe(keys.live(SID))
    async with serving(hook):
        cfg = settings(
            webhook_urls=hook.url,
            webhook_secret=SECRET,
            webhook_finals=True,
            webhook_timeout_s=0.3,
            webhook_max_attempts=2,
        )
        async with asyncio.timeout(15), notifying(cfg, redis) as notifier:
            await queue(redis, "call_started", OTHER)  # another call's: the notifier is busy
            await hook.until(lambda: len(hook.posts) == 1)
            await serve_call(redis, SID, events, cfg)
            stored = await stored_texts(redis, SID)
            published = []
            while True:  # every event the call published, up to its end
                msg = await live.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    continue
                data = json.loads(msg["data"])
                if data["type"] == "end":
                    break
                published.append(data["text"])
            await drained(redis, SID)
            await drained(redis, OTHER)
    await live.aclose()
    assert stored == published == ["Thursday at three works.", "See you then."]
    sent = [f"{OTHER}:call_started"]
    sent += [f"{SID}:{k}" for k in ("call_started", "final:0", "final:1", "call_ended")]
    assert {k: hook.count(k) for k in sent} == dict.fromkeys(sent, 2)
    assert (notifier.delivered, notifier.dropped) == (0, 5)
    failed = records(caplog, "webhook failed; retrying")
    assert len(failed) == 10 and {r.error for r in failed} == {"TimeoutError"}  # type: ignore[attr-defined]


async def test_a_delivery_whose_notifier_died_is_delivered_by_another(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notifier n1 takes a delivery and dies mid-POST: the entry stays pending under n1 and,
    once idle CLAIM_IDLE_MS, notifier n2 claims it and delivers it with the same idempotency key
    and a valid signature, then acknowledges it."""
    monkeypatch.setattr(webhooks, "CLAIM_IDLE_MS", 200)
    hook = Hook(answer=lambda key, n: None if n == 1 else 204)  # the first POST hangs
    await start_meta(redis, SID)
    async with serving(hook), asyncio.timeout(10):
        cfg = settings(webhook_urls=hook.url, webhook_secret=SECRET)
        key = await queue(redis, "call_started", SID)
        async with notifying(cfg.model_copy(update={"consumer": "n1"}), redis):
            await hook.until(lambda: hook.count(key) == 1)
            [held] = await pending(redis, SID)
            assert held["consumer"] == b"n1"
        # n1 is gone: its delivery is still pending under it
        [left] = await pending(redis, SID)
        assert left["consumer"] == b"n1"
        async with notifying(cfg.model_copy(update={"consumer": "n2"}), redis) as n2:
            await hook.until(lambda: hook.count(key) == 2)
            await drained(redis, SID)
    assert n2.delivered == 1
    assert [(p.key, p.event, p.signed) for p in hook.posts] == [(key, "call_started", True)] * 2
    assert hook.posts[0].body["id"] == hook.posts[1].body["id"] == key


async def test_a_delivery_being_retried_is_not_taken_over(
    redis: aioredis.Redis, backoffs: Backoffs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery still between attempts (its backoff longer than CLAIM_IDLE_MS) stays claimed
    by the notifier retrying it: no second copy is started (by it or another notifier), so the
    receiver gets exactly WEBHOOK_MAX_ATTEMPTS POSTs."""
    monkeypatch.setattr(webhooks, "CLAIM_IDLE_MS", 200)
    backoffs.gate = asyncio.Event()  # the retry waits until the test opens it
    await start_meta(redis, SID)
    failing = f"{SID}:call_started"
    hook = Hook(answer=lambda key, n: 500 if key == failing else 204)
    async with serving(hook), asyncio.timeout(10):
        cfg = settings(webhook_urls=hook.url, webhook_secret=SECRET, webhook_max_attempts=3)
        async with notifying(cfg, redis) as notifier:
            await queue(redis, "call_started", SID)
            await backoffs.waiting.wait()  # attempt 1 failed; the retry is waiting
            [entry] = await pending(redis, SID)
            assert entry["times_delivered"] == 1
            # an entry's idle time is Redis's wall clock: nothing to await but time itself
            await asyncio.sleep(2 * webhooks.CLAIM_IDLE_MS / 1000)
            # two more deliveries: the reader has looked for idle entries (XAUTOCLAIM) since
            for event in ("final", "call_ended"):
                later = await queue(redis, event, SID)
                await hook.until(lambda later=later: later in hook.accepted())
            [now] = [p for p in await pending(redis, SID) if p["message_id"] == entry["message_id"]]
            assert now["times_delivered"] == 1  # never claimed again (XAUTOCLAIM would count 2)
            backoffs.gate.set()
            await hook.until(lambda: hook.count(failing) == 3)
            await drained(redis, SID)
    assert hook.count(failing) == 3
    assert (notifier.delivered, notifier.dropped) == (2, 1)


def test_verify_refuses_a_stale_or_future_timestamp_a_tampered_body_and_a_bad_header() -> None:
    """The receiver's check (:func:`verify`, as docs/protocol.md describes it): the signature
    of the body at ``t`` with the secret, ``t`` within TOLERANCE_S (five minutes) of now either
    way; anything else, however malformed, is False rather than an exception."""
    body = b'{"type":"call_ended","id":"CA1:call_ended"}'
    now = 1_700_000_000.0
    t = int(now)
    header = sign(SECRET, body, t)
    assert verify(SECRET, body, header, now)
    assert webhooks.TOLERANCE_S == 300.0
    assert verify(SECRET, body, header, now + 300)  # at the tolerance: still accepted
    assert verify(SECRET, body, header, now - 300)
    assert not verify(SECRET, body, header, now + 301)  # stale
    assert not verify(SECRET, body, header, now - 301)  # from the future
    assert verify(SECRET, body, header, now + 60, tolerance_s=60)
    assert not verify(SECRET, body, header, now + 61, tolerance_s=60)
    stale = sign(SECRET, body, t - 3600)  # a correct signature, an hour old: a replay
    assert not verify(SECRET, body, stale, now)
    assert not verify(SECRET, body + b" ", header, now)  # tampered body
    assert not verify(SECRET, body.replace(b"ended", b"ENDED"), header, now)
    assert not verify("other-secret", body, header, now)
    mac = header.split("v1=", 1)[1]
    assert not verify(SECRET, body, f"t={t + 1},v1={mac}", now)  # t changed, v1 kept
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    for bad in (
        f"t={t},v1={flipped}",
        f"t={t}",
        f"v1={mac}",
        f"t=,v1={mac}",
        f"t=soon,v1={mac}",
        f"t={t};v1={mac}",
        f"t={t},v1={mac.upper()}",
        "",
        "garbage",
        f"t={t},v1=é{mac[1:]}",  # non-ASCII (a header decoded as UTF-8)
        f"t={'9' * 400},v1={mac}",  # a time no float can hold
        f"t={t},v1={'0' * 10_000}",
    ):
        assert verify(SECRET, body, bad, now) is False, bad
