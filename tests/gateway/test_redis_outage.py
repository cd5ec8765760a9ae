"""Redis restarted under a running gateway: clients are told, then get every final once."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from shared.redisconn import connect as connect_redis
from tests.gateway.conftest import FakeTranscriber, recv_json
from tests.gateway.test_http import http_get
from tests.redis_server import RedisServer


async def test_restart_reconnects_and_replays_missed_finals(
    gateway, redis: aioredis.Redis, redis_server: RedisServer
) -> None:
    """after a Redis restart the hub resubscribes and the client gets each final exactly once."""
    call = FakeTranscriber(redis, "CAout")
    await call.start()
    before = [await call.final(f"before {i}") for i in range(3)]
    try:
        async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "call_sid": "CAout", "since": "0"}))
            assert (await recv_json(ws))["type"] == "subscribed"
            assert [(await recv_json(ws))["id"] for _ in before] == before
            await asyncio.to_thread(redis_server.stop)
            notice = await recv_json(ws)
            assert (notice["type"], notice["code"], notice["call_sid"]) == (
                "error",
                "reconnecting",
                "CAout",
            )
            status, body = await http_get(port, "/healthz")
            assert status == 503 and json.loads(body)["redis"] is False
            await asyncio.to_thread(redis_server.start)
            call.r = connect_redis(redis_server.url)  # the old client's socket died with the server
            try:
                await call.start()  # nothing is persisted: the transcriber writes the call again
                after = [await call.final(f"after {i}") for i in range(5)]
            finally:
                await call.r.aclose()
            got = []
            while len(got) < len(after):
                message = await recv_json(ws)
                if message["type"] == "transcript":
                    got.append(message["id"])
            assert got == after
            status, _ = await http_get(port, "/healthz")
            assert status == 200
    finally:
        if redis_server.proc is None:
            await asyncio.to_thread(redis_server.start)
