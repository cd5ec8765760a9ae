"""``/client``: the tutorial's protocol, exactly, against a real gateway and redis-server."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway.conftest import FakeTranscriber, recv_json

RESULTS_KEYS = {"type", "channel_index", "duration", "start", "is_final", "speech_final", "channel"}


async def test_tutorial_flow_array_sid_results_close(gateway, redis: aioredis.Redis) -> None:
    """array of callSids, callSid as text with whitespace, history + live Results, 1000 on end."""
    call = FakeTranscriber(redis, "CAtut")
    await call.start()
    await call.final("early words", channel=1)
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/client") as ws:
        assert await recv_json(ws) == ["CAtut"]
        await ws.send("  CAtut\n")
        early = await recv_json(ws)
        assert set(early) == RESULTS_KEYS
        assert early["type"] == "Results" and early["channel_index"] == [1, 2]
        alt = early["channel"]["alternatives"][0]
        assert alt["transcript"] == "early words"
        assert [w["word"] for w in alt["words"]] == ["early", "words"]
        assert set(alt["words"][0]) == {"word", "start", "end", "confidence"}
        await call.interim("live")
        interim = await recv_json(ws)
        assert (interim["is_final"], interim["channel_index"]) == (False, [0, 2])
        await call.final("live words")
        live = await recv_json(ws)
        assert live["is_final"] and live["speech_final"]
        assert live["start"] == 1.0 and live["duration"] == 0.5
        await call.end()
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1000


async def test_unknown_call_sid_closes_1008(gateway, redis: aioredis.Redis) -> None:
    """an unknown callSid closes the socket with 1008 and a reason."""
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/client") as ws:
        assert await recv_json(ws) == []
        await ws.send("CAnobody")
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1008
        assert "callSid" in (ws.close_reason or "")


@pytest.mark.parametrize("nonsense", ["CA" + "0" * 5000, "CA1; DROP", "{\"type\": \"list\"}"])
async def test_nonsense_call_sid_closes_1008_without_a_lookup(
    gateway, redis: aioredis.Redis, nonsense: str
) -> None:
    """text that cannot be a callSid (too long, odd characters, JSON) closes with 1008."""
    await redis.config_resetstat()
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/client", max_size=None) as ws:
        assert await recv_json(ws) == []
        await ws.send(nonsense)
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
        assert ws.close_code == 1008
    stats = await redis.info("commandstats")
    assert "cmdstat_sismember" not in stats and "cmdstat_hmget" not in stats, stats


async def test_shutdown_closes_clients_1012(gateway, redis: aioredis.Redis) -> None:
    """stopping the gateway closes connected clients with 1012 (service restart)."""
    await FakeTranscriber(redis, "CAbye").start()
    async with gateway() as port:
        ws = await connect(f"ws://127.0.0.1:{port}/client")
        assert json.loads(await ws.recv()) == ["CAbye"]
        await ws.send("CAbye")
    with pytest.raises(ConnectionClosed):
        await recv_json(ws)
    assert ws.close_code == 1012
