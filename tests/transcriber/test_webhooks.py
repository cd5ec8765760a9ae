"""Webhooks: signed, retried, at least once, from the transcriber's own transactions."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from services.transcriber.webhooks import Notifier, verify
from shared import keys
from shared.schema import CallMeta, TranscriptEvent
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
