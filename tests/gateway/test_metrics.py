"""The gateway's ``/metrics``: the Prometheus text format, and figures that follow its clients."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from tests.gateway.conftest import FakeTranscriber, recv_json
from tests.metrics_util import scrape, wait_metric


async def test_metrics_follow_a_watcher(gateway, redis: aioredis.Redis) -> None:
    """A client connecting, receiving a call's events and leaving moves clients, sent, channels."""
    call = FakeTranscriber(redis, "CA200")
    await call.start()
    await call.final("hello there")
    async with gateway() as port:
        url = f"http://127.0.0.1:{port}/metrics"
        before = await wait_metric(url, "callscribe_gateway_redis_up", lambda v: v == 1)
        assert before["callscribe_gateway_clients"] == 0
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "call_sid": "CA200", "since": "0"}))
            assert (await recv_json(ws))["type"] == "subscribed"
            assert (await recv_json(ws))["text"] == "hello there"
            during = await scrape(url)
            assert during["callscribe_gateway_clients"] == 1
            assert during["callscribe_gateway_clients_connected_total"] == 1
            assert during["callscribe_gateway_subscribed_channels"] == 1
            assert during["callscribe_gateway_messages_sent_total"] == 2
        after = await wait_metric(url, "callscribe_gateway_clients", lambda v: v == 0)
    assert after["callscribe_gateway_messages_sent_total"] == 2  # kept once the client is gone
    assert after["callscribe_gateway_slow_client_closes_total"] == 0
    assert after["callscribe_gateway_redis_errors_total"] == 0
