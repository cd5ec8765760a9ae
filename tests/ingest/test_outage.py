"""Redis going away mid-call: the read loop keeps reading, drops are counted, writing resumes."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from callscribe.twilio_messages import SimCall, twilio_messages
from shared import keys
from tests.redis_server import RedisServer

from .conftest import WAIT_S, read_audio


async def test_redis_outage_buffers_drops_and_resumes(
    ingest,
    redis_server: RedisServer,
    redis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """During an outage Twilio is still read; after it, later frames and eof reach Redis."""
    caplog.set_level(logging.INFO)
    call = SimCall(tracks=[bytes(range(256)) * 50])  # 12800 bytes = 1.6 s = 80 packets
    msgs = [text for _, text in twilio_messages(call)]
    head, middle, tail = msgs[:12], msgs[12:62], msgs[62:]
    try:
        async with (
            ingest(write_buffer_frames=3, reorder_ms=0) as port,
            httpx.AsyncClient(timeout=WAIT_S) as http,
        ):
            async with connect(f"ws://127.0.0.1:{port}/twilio") as ws:
                for text in head:  # connected, start, 10 packets = 200 ms
                    await ws.send(text)
                async with asyncio.timeout(WAIT_S):
                    while await redis.xlen(keys.audio(call.call_sid)) < 2:  # noqa: ASYNC110 (polls Redis: no event to await)
                        await asyncio.sleep(0.01)
                redis_server.stop()
                for text in middle:  # 1 s of audio: more than the 3 frames the buffer holds
                    await ws.send(text)
                async with asyncio.timeout(WAIT_S):  # the read loop goes on reading, and drops
                    while True:
                        health = await http.get(f"http://127.0.0.1:{port}/healthz")
                        body = health.json()
                        if body["dropped_frames"] >= 5 and body["writes_ok"] is False:
                            break
                        await asyncio.sleep(0.01)
                assert health.status_code == 503
                assert health.json()["redis"] is False
                redis_server.start()
                async with asyncio.timeout(WAIT_S):  # the writer reconnects and drains its buffer
                    while True:
                        health = await http.get(f"http://127.0.0.1:{port}/healthz")
                        if health.status_code == 200 and health.json()["pending"] == 0:
                            break
                        await asyncio.sleep(0.01)
                for text in tail:
                    await ws.send(text)
                # Redis lost everything at its restart; what was written after it must be there
                fresh = aioredis.Redis.from_url(redis_server.url)
                try:
                    frames = await read_audio(fresh, call.call_sid)
                finally:
                    await fresh.aclose()
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        if redis_server.proc is None:
            redis_server.start()
    assert frames[-1].eof and frames[-1].t_ms == 1600
    assert any(f.t_ms >= 1300 for f in frames if not f.eof)
    times = [f.t_ms for f in frames]
    assert times == sorted(times)
    assert health.status_code == 200 and health.json()["dropped_frames"] > 0
    text = caplog.text
    assert "write buffer full, dropping audio" in text
    assert "redis reconnected" in text
    ended = [r for r in caplog.records if r.getMessage() == "call ended"]
    assert ended and ended[0].dropped_frames > 0  # type: ignore[attr-defined]
