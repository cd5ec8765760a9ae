"""A call beyond MAX_CALLS is visible: ``queued`` in the gateway until a worker frees up.

Ingest, one transcriber (MAX_CALLS=1, fake Deepgram) and the gateway run in this process on a
real redis-server; two Twilio streams are driven by hand so the test decides when each ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from callscribe.twilio_messages import SimCall, twilio_messages
from tests.fakes.deepgram import FakeDeepgram
from tests.gateway.conftest import make_settings, running_gateway
from tests.ingest.conftest import ingest_running
from tests.metrics_util import wait_metric
from tests.transcriber.test_metrics import worker_on_port

WAIT_S = 15.0


@asynccontextmanager
async def held_call(port: int, call: SimCall) -> AsyncIterator[Any]:
    """Stream ``call`` to ingest but its ``stop``; yields a coroutine function that sends it."""
    messages = [text for _, text in twilio_messages(call)]
    async with connect(f"ws://127.0.0.1:{port}/twilio") as ws:
        for text in messages[:-1]:
            await ws.send(text)

        async def stop() -> None:
            await ws.send(messages[-1])

        yield stop


async def next_event(ws: ClientConnection, kind: str, sid: str) -> dict[str, Any]:
    """The next ``kind`` event about call ``sid`` on a ``/v1/ws`` list watcher."""
    async with asyncio.timeout(WAIT_S):
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] == kind and msg["call"]["call_sid"] == sid:
                return msg  # type: ignore[no-any-return]


async def statuses(gateway_port: int) -> dict[str, str]:
    """``GET /v1/calls`` as {call_sid: status}."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        resp = await client.get(f"http://127.0.0.1:{gateway_port}/v1/calls")
    return {c["call_sid"]: c["status"] for c in resp.json()}


async def test_call_beyond_max_calls_is_queued_then_live(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With MAX_CALLS=1 a second call shows queued (gateway, metric 1, one warning), then live."""
    caplog.set_level(logging.INFO, logger="services.transcriber")
    tracks = [bytes([0xFF]) * 8000, bytes([0xFF]) * 8000]  # 1 s of silence per track
    first, second = SimCall(tracks=tracks), SimCall(tracks=tracks)
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeDeepgram([]))
        ingest = await stack.enter_async_context(ingest_running(redis_url))
        gw = await stack.enter_async_context(running_gateway(make_settings(redis_url)))
        worker = await stack.enter_async_context(worker_on_port(redis_url, fake.url, max_calls=1))
        metrics = f"http://127.0.0.1:{worker}/metrics"
        watcher = await stack.enter_async_context(connect(f"ws://127.0.0.1:{gw}/v1/ws"))
        await watcher.send(json.dumps({"type": "list"}))
        assert json.loads(await watcher.recv())["type"] == "calls"

        stop_first = await stack.enter_async_context(held_call(ingest, first))
        assert (await next_event(watcher, "call_started", first.call_sid))["call"][
            "status"
        ] == "queued"
        await next_event(watcher, "call_updated", first.call_sid)  # claimed: live
        stop_second = await stack.enter_async_context(held_call(ingest, second))
        await next_event(watcher, "call_started", second.call_sid)

        await wait_metric(metrics, "callscribe_transcriber_calls_queued", lambda v: v == 1)
        assert await statuses(gw) == {first.call_sid: "live", second.call_sid: "queued"}
        full = [
            r for r in caplog.records if r.getMessage() == "at capacity: calls wait for a worker"
        ]
        assert len(full) == 1 and full[0].levelno == logging.WARNING

        await stop_first()  # the worker frees up and claims the waiting call
        updated = await next_event(watcher, "call_updated", second.call_sid)
        assert updated["call"]["status"] == "live"
        assert await statuses(gw) == {second.call_sid: "live"}
        await wait_metric(metrics, "callscribe_transcriber_calls_queued", lambda v: v == 0)

        await stop_second()
        await next_event(watcher, "call_ended", second.call_sid)
    waiting_logs = [
        r for r in caplog.records if r.getMessage() == "at capacity: calls wait for a worker"
    ]
    assert len(waiting_logs) == 1  # once per change, not per loop
