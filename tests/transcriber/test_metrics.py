"""The worker's ``/metrics`` and ``/healthz``: parsed as Prometheus text, moving with a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from services.transcriber.app import run
from services.transcriber.deepgram import DeepgramEngine
from shared import keys
from tests.fakes.deepgram import FakeDeepgram
from tests.metrics_util import scrape, wait_metric
from tests.transcriber.dgutil import call_audio, dentist, settings
from tests.transcriber.test_worker import add_audio, add_call, history, sid_of, wait_messages

WAIT_S = 15.0


@asynccontextmanager
async def worker_on_port(redis_url: str, dg_url: str, **overrides: object) -> AsyncIterator[int]:
    """A running worker with its own engine; yields the port of its metrics server."""
    s = settings(redis_url=redis_url, deepgram_url=dg_url, metrics_port=0, **overrides)
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    engine = DeepgramEngine(s, backoff_s=0.01)
    task = asyncio.create_task(run(s, stop=stop, bound=bound, engine=engine))
    try:
        async with asyncio.timeout(WAIT_S):
            port = await asyncio.shield(bound)
        yield port
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task


async def test_metrics_follow_a_call_with_a_deepgram_drop(
    redis_url: str, redis: aioredis.Redis, audio_dir: Path
) -> None:
    """A call whose Deepgram connection drops once: served, reconnects, latency per result."""
    script, duration_s = dentist(audio_dir)
    audio = call_audio(duration_s)
    sid = sid_of(90)
    events = redis.pubsub()
    await events.subscribe(keys.CALL_EVENTS)
    async with (
        FakeDeepgram(script, reference=audio, drop_after_s=8.0) as fake,
        worker_on_port(redis_url, fake.url) as port,
    ):
        url = f"http://127.0.0.1:{port}/metrics"
        before = await scrape(url)
        await add_call(redis, sid)
        await add_audio(redis, sid, audio)
        await wait_messages(events, {sid}, "call_ended")
        after = await wait_metric(
            url, "callscribe_transcriber_calls_served_total", lambda v: v == 1
        )
        async with httpx.AsyncClient(timeout=5.0) as client:
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
    await events.aclose()
    assert before["callscribe_transcriber_calls_served_total"] == 0
    assert before["callscribe_transcriber_calls_max"] == 4
    assert after["callscribe_transcriber_calls"] == 0
    assert after["callscribe_transcriber_asr_reconnects_total"] == 1
    finals = len(await history(redis, sid))
    assert after["callscribe_transcriber_transcript_latency_seconds_count{kind=final}"] == finals
    assert after["callscribe_transcriber_transcript_latency_seconds_count{kind=interim}"] > 0
    assert after["callscribe_transcriber_redis_errors_total"] == 0
    assert after["callscribe_transcriber_calls_queued"] == 0
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["max_calls"] == 4
