"""The ``/v1/ws`` JSON protocol against a real gateway and a real redis-server."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.gateway.conftest import FakeTranscriber, recv_json


async def test_subscribe_replays_history_then_live_then_end(gateway, redis: aioredis.Redis) -> None:
    """subscribe with since "0" gets subscribed, the history, live finals and interims, then end."""
    call = FakeTranscriber(redis, "CA100")
    await call.start()
    first = await call.final("hello there")
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "call_sid": "CA100", "since": "0"}))
        assert await recv_json(ws) == {"type": "subscribed", "call_sid": "CA100"}
        replayed = await recv_json(ws)
        assert (replayed["type"], replayed["id"], replayed["text"]) == (
            "transcript",
            first,
            "hello there",
        )
        await call.interim("how are")
        interim = await recv_json(ws)
        assert interim["is_final"] is False and interim["id"] is None
        second = await call.final("how are you")
        assert (await recv_json(ws))["id"] == second
        await call.end()
        assert await recv_json(ws) == {"type": "end", "call_sid": "CA100"}


async def test_list_answers_calls_then_pushes_call_events(gateway, redis: aioredis.Redis) -> None:
    """list answers the active calls' metadata, then pushes call_started and call_ended."""
    await FakeTranscriber(redis, "CA1").start()
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send('{"type": "list"}')
        calls = await recv_json(ws)
        assert calls["type"] == "calls"
        assert [c["call_sid"] for c in calls["calls"]] == ["CA1"]
        assert calls["calls"][0]["channels"] == 2
        second = FakeTranscriber(redis, "CA2")
        await second.start()
        started = await recv_json(ws)
        assert (started["type"], started["call"]["call_sid"]) == ("call_started", "CA2")
        await second.end()
        ended = await recv_json(ws)
        assert (ended["type"], ended["call"]["call_sid"], ended["call"]["status"]) == (
            "call_ended",
            "CA2",
            "ended",
        )


async def test_several_calls_and_unsubscribe(gateway, redis: aioredis.Redis) -> None:
    """one connection follows two calls; after unsubscribe it gets nothing more of that call."""
    a, b = FakeTranscriber(redis, "CAa"), FakeTranscriber(redis, "CAb")
    await a.start()
    await b.start()
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        for sid in ("CAa", "CAb"):
            await ws.send(json.dumps({"type": "subscribe", "call_sid": sid}))
            assert await recv_json(ws) == {"type": "subscribed", "call_sid": sid}
        await a.final("from a")
        await b.final("from b")
        got = [await recv_json(ws), await recv_json(ws)]
        assert {(m["call_sid"], m["text"]) for m in got} == {("CAa", "from a"), ("CAb", "from b")}
        await ws.send(json.dumps({"type": "unsubscribe", "call_sid": "CAa"}))
        assert await recv_json(ws) == {"type": "unsubscribed", "call_sid": "CAa"}
        await a.final("not for you")
        last = await b.final("still b")
        message = await recv_json(ws)
        assert (message["call_sid"], message["id"]) == ("CAb", last)


async def test_ended_call_replays_then_ends(gateway, redis: aioredis.Redis) -> None:
    """subscribing to a call that already ended replays its history and sends end at once."""
    call = FakeTranscriber(redis, "CAold")
    await call.start()
    ids = [await call.final(f"line {i}") for i in range(3)]
    await call.end()
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "call_sid": "CAold", "since": ids[0]}))
        assert (await recv_json(ws))["type"] == "subscribed"
        assert [(await recv_json(ws))["id"] for _ in ids[1:]] == ids[1:]
        assert await recv_json(ws) == {"type": "end", "call_sid": "CAold"}


async def test_nonsense_gets_error_events_and_many_close(gateway, redis: aioredis.Redis) -> None:
    """bad JSON, unknown type, missing fields and unknown calls get error events; the
    connection stays open, and ten errors within a minute close it with 1008, good messages
    in between notwithstanding (7 before the list, 3 after)."""
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        cases = [
            ("not json", "bad_json"),
            ("[1, 2]", "bad_json"),
            ('{"type": "dance"}', "bad_request"),
            ('{"type": "subscribe"}', "bad_request"),
            ('{"type": "subscribe", "call_sid": "CA1", "since": "yesterday"}', "bad_request"),
            ('{"type": "subscribe", "call_sid": "CAnope"}', "unknown_call"),
            ('{"type": "unsubscribe", "call_sid": "CAnope"}', "not_subscribed"),
        ]
        for raw, code in cases:
            await ws.send(raw)
            error = await recv_json(ws)
            assert (error["type"], error["code"]) == ("error", code), raw
            assert error["message"]
        await ws.send('{"type": "list"}')
        assert (await recv_json(ws))["type"] == "calls"
        for _ in range(10):
            await ws.send("garbage")
        codes = []
        with pytest.raises(ConnectionClosed):
            while True:
                codes.append((await recv_json(ws))["code"])
        assert codes == ["bad_json"] * 3
        assert ws.close_code == 1008


async def test_memory_mode_serves_subscribers() -> None:
    """run() works on memory:// (fakeredis, single-process mode) end to end."""
    from shared.redisconn import connect as connect_redis
    from tests.gateway.conftest import make_settings, running_gateway

    r = connect_redis("memory://gateway-test")
    call = FakeTranscriber(r, "CAmem")
    await call.start()
    first = await call.final("in memory")
    settings = make_settings("memory://gateway-test")
    async with running_gateway(settings) as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "call_sid": "CAmem", "since": "0"}))
        assert (await recv_json(ws))["type"] == "subscribed"
        assert (await recv_json(ws))["id"] == first
        second = await call.final("live in memory")
        assert (await recv_json(ws))["id"] == second
    await r.aclose()
