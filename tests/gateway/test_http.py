"""HTTP endpoints of the gateway, over a real socket."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from tests.gateway.conftest import WAIT_S, FakeTranscriber


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(WAIT_S):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_calls_call_and_transcript(gateway, redis: aioredis.Redis) -> None:
    """/v1/calls lists active calls, /v1/calls/{sid} gives one or 404, /transcript gives finals
    with ids (after since when given)."""
    call = FakeTranscriber(redis, "CAh")
    await call.start()
    ids = [await call.final(f"part {i}") for i in range(3)]
    async with gateway() as port:
        status, body = await http_get(port, "/v1/calls")
        assert status == 200 and [c["call_sid"] for c in json.loads(body)] == ["CAh"]
        status, body = await http_get(port, "/v1/calls/CAh")
        assert status == 200 and json.loads(body)["stream_sid"] == "MZh"
        status, body = await http_get(port, "/v1/calls/CAmissing")
        assert status == 404 and json.loads(body)["code"] == "unknown_call"
        status, body = await http_get(port, "/v1/calls/CAh/transcript")
        assert status == 200 and [e["id"] for e in json.loads(body)] == ids
        status, body = await http_get(port, f"/v1/calls/CAh/transcript?since={ids[0]}")
        assert [e["text"] for e in json.loads(body)] == ["part 1", "part 2"]
        for bad in ("nope", "0%0A", "99999999999999999999999-0"):  # Redis would refuse the last
            status, body = await http_get(port, f"/v1/calls/CAh/transcript?since={bad}")
            assert status == 400 and json.loads(body)["code"] == "bad_request", bad


async def test_healthz_and_page(gateway, redis: aioredis.Redis) -> None:
    """/healthz says ok with redis true; / serves the self-contained page that uses /v1/ws."""
    async with gateway() as port:
        status, body = await http_get(port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["redis"] is True
        status, body = await http_get(port, "/")
        page = body.decode()
        assert status == 200 and "/v1/ws" in page and "<script" in page
        assert "http://" not in page and "https://" not in page  # no CDN
