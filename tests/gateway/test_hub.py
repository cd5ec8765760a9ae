"""The hub on its own (no HTTP): subscriptions across reconnects and bad pub/sub payloads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from services.gateway.hub import Hub
from services.gateway.outbox import Outbox
from shared import keys
from tests.gateway.conftest import WAIT_S, FakeTranscriber, recv_json


@asynccontextmanager
async def running_hub(hub: Hub) -> AsyncIterator[Hub]:
    """Run ``hub`` in a task; cancel it on exit."""
    task = asyncio.create_task(hub.run())
    try:
        yield hub
    finally:
        task.cancel()
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(task, return_exceptions=True)


async def next_sent(outbox: Outbox, sent: list[str], n: int) -> list[Any]:
    """Pump ``outbox`` until ``sent`` holds ``n`` messages; them, parsed."""
    got = asyncio.Event()

    async def send(text: str) -> None:
        sent.append(text)
        if len(sent) >= n:
            got.set()

    pump = asyncio.create_task(outbox.pump(send, WAIT_S))
    try:
        async with asyncio.timeout(WAIT_S):
            await got.wait()
    finally:
        pump.cancel()
    return [json.loads(t) for t in sent]


async def test_subscribe_while_the_hub_connects_is_not_lost(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """a call attached while the pub/sub connection is being set up still goes live."""
    call = FakeTranscriber(redis, "CAwin")
    await call.start()
    hub = Hub(redis_url, redis_timeout_s=2.0, ping_interval_s=0.5)
    connecting, gate = asyncio.Event(), asyncio.Event()
    make_pubsub = hub.listener.client.pubsub

    def gated_pubsub() -> Any:
        ps = make_pubsub()
        real_connect = ps.connect

        async def connect_then_wait() -> None:
            await real_connect()
            connecting.set()
            await gate.wait()

        ps.connect = connect_then_wait
        return ps

    hub.listener.client.pubsub = gated_pubsub  # type: ignore[method-assign]
    async with running_hub(hub):
        async with asyncio.timeout(WAIT_S):
            await connecting.wait()
        outbox = Outbox(16)
        await hub.attach_call("CAwin", outbox, since=None)
        await asyncio.sleep(0)  # let the command task see the subscribe while offline
        gate.set()
        async with asyncio.timeout(WAIT_S):
            await hub.connected.wait()
            while not hub.listener.settled:  # noqa: ASYNC110 (confirmation arrives over Redis)
                await asyncio.sleep(0.01)
        final_id = await call.final("after connect")
        [message] = await next_sent(outbox, [], 1)
        assert message["id"] == final_id


async def test_bad_pubsub_payloads_do_not_stop_the_gateway(gateway, redis: aioredis.Redis) -> None:
    """non-UTF-8 call events and finals with a non-string id are dropped; the gateway goes on."""
    call = FakeTranscriber(redis, "CAbad")
    await call.start()
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send('{"type": "list"}')
        assert (await recv_json(ws))["type"] == "calls"
        await ws.send(json.dumps({"type": "subscribe", "call_sid": "CAbad"}))
        assert (await recv_json(ws))["type"] == "subscribed"
        await redis.publish(keys.CALL_EVENTS, b"\xff\xfe not utf-8")
        for bad_id in (5, {"x": 1}, ["1-0"]):
            await redis.publish(
                keys.live("CAbad"),
                json.dumps({"type": "transcript", "is_final": True, "id": bad_id}),
            )
        final_id = await call.final("still here")
        assert (await recv_json(ws))["id"] == final_id
        other = FakeTranscriber(redis, "CAnext")
        await other.start()
        started = await recv_json(ws)
        assert (started["type"], started["call"]["call_sid"]) == ("call_started", "CAnext")


async def test_cancel_with_live_subscribers_stops_cleanly(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """cancelling the hub while clients are still attached ends it cancelled, not in an error."""
    await FakeTranscriber(redis, "CAstay").start()
    hub = Hub(redis_url, redis_timeout_s=2.0, ping_interval_s=0.5)
    task = asyncio.create_task(hub.run())
    async with asyncio.timeout(WAIT_S):
        await hub.connected.wait()
    await hub.attach_call("CAstay", Outbox(16), since=None)
    async with asyncio.timeout(WAIT_S):
        while not hub.confirmed(keys.live("CAstay")):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    task.cancel()
    async with asyncio.timeout(WAIT_S):
        results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError), results
