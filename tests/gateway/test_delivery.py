"""Delivery promises: no gap and no duplicate, one subscription per gateway, slow clients."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from shared import keys
from tests.gateway.conftest import (
    WAIT_S,
    FakeTranscriber,
    RawSlowClient,
    numsub,
    recv_json,
    wait_numsub,
)


@pytest.mark.parametrize("delay_s", [0.0, 0.001, 0.003, 0.01, 0.03])
async def test_since_replay_during_publishing_has_no_gap_no_dup(
    gateway, redis: aioredis.Redis, delay_s: float
) -> None:
    """a client subscribing with since while finals are being added gets each final once, in order."""
    call = FakeTranscriber(redis, "CArace")
    await call.start()
    total = 60
    published: list[str] = []

    async def publish() -> None:
        for i in range(total):
            published.append(await call.final(f"word {i}"))
            if i % 3 == 0:
                await call.interim(f"partial {i}")
            await asyncio.sleep(0.0005)

    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        publisher = asyncio.create_task(publish())
        await asyncio.sleep(delay_s)
        await ws.send(json.dumps({"type": "subscribe", "call_sid": "CArace", "since": "0"}))
        assert (await recv_json(ws))["type"] == "subscribed"
        got: list[str] = []
        while len(got) < total:
            message = await recv_json(ws)
            if message["is_final"]:
                got.append(message["id"])
        await publisher
    assert got == published


async def test_two_gateways_hold_one_subscription_each(gateway, redis: aioredis.Redis) -> None:
    """each gateway holds one Redis subscription per call however many local clients follow
    it, and drops it after the last one leaves."""
    call = FakeTranscriber(redis, "CAfan")
    await call.start()
    channel = keys.live("CAfan")
    subscribe = json.dumps({"type": "subscribe", "call_sid": "CAfan"})
    async with gateway() as port_a, gateway() as port_b:
        clients = [
            await connect(f"ws://127.0.0.1:{port}/v1/ws")
            for port in (port_a, port_a, port_a, port_b, port_b)
        ]
        try:
            for ws in clients:
                await ws.send(subscribe)
                assert (await recv_json(ws))["type"] == "subscribed"
            await wait_numsub(redis, channel, 2)
            final_id = await call.final("to everyone")
            for ws in clients:
                assert (await recv_json(ws))["id"] == final_id
            assert await numsub(redis, channel) == 2
        finally:
            for ws in clients:
                await ws.close()
        await wait_numsub(redis, channel, 0)


async def test_slow_client_never_delays_others_and_is_closed_1013(
    gateway, redis: aioredis.Redis
) -> None:
    """a client that does not read is closed with 1013 once finals overflow its queue, after
    an in-order prefix, while a reading client gets every final."""
    call = FakeTranscriber(redis, "CAslow")
    await call.start()
    async with gateway(client_queue_max=8, send_timeout_s=5.0) as port:
        slow = RawSlowClient()
        await slow.open(port, "/v1/ws")
        fast = await connect(f"ws://127.0.0.1:{port}/v1/ws")
        subscribe = json.dumps({"type": "subscribe", "call_sid": "CAslow"})
        slow.send_text(subscribe)
        await fast.send(subscribe)
        assert (await recv_json(fast))["type"] == "subscribed"
        bulk = "x" * 32_000
        published = []
        got = []
        for i in range(300):  # ~10 MB: more than the socket buffers (up to ~4 MB) hold
            published.append(await call.final(f"{i} {bulk}"))
            got.append((await recv_json(fast))["id"])
        assert got == published
        async with asyncio.timeout(WAIT_S):
            # the state is in another server: poll /healthz
            while (await _health(port))["slow_clients_closed"] != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        messages, code, reason = await slow.read_all()
        prefix = [m["id"] for m in messages if m["type"] == "transcript"]
        assert code == 1013
        assert "since" in reason
        assert 0 < len(prefix) < len(published)
        assert prefix == published[: len(prefix)]
        await fast.close()


async def _health(port: int) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(WAIT_S):
            raw = await reader.read()
    finally:
        writer.close()
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])
