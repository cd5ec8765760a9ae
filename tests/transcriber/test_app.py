"""Engine choice, the health key and ``--check``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import time

import pytest
import redis as syncredis
import redis.asyncio as aioredis

from services.transcriber.__main__ import main
from services.transcriber.app import run
from services.transcriber.choose_engine import make_engine
from services.transcriber.deepgram import DeepgramEngine
from services.transcriber.health import check
from shared import keys
from shared.errors import AsrError
from tests.redis_server import RedisServer
from tests.transcriber.dgutil import settings


def test_deepgram_engine_is_made_for_deepgram() -> None:
    """ASR_ENGINE=deepgram gives the Deepgram engine."""
    assert isinstance(make_engine(settings()), DeepgramEngine)


def test_whisper_without_faster_whisper_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without faster-whisper, asking for whisper fails with a final error naming the extra."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "faster_whisper" else real(name, *a),
    )
    with pytest.raises(AsrError) as info:
        make_engine(settings(asr_engine="whisper"))
    assert "pip install .[whisper]" in str(info.value)
    assert info.value.retryable is False


async def test_running_worker_keeps_a_fresh_health_key(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """A running worker's health key holds {calls, ts} and check() finds it; after stop it is gone."""
    s = settings(redis_url=redis_url, consumer="healthy")
    await redis.config_set("notify-keyspace-events", "K$")
    written = redis.pubsub()
    await written.subscribe(f"__keyspace@0__:{keys.worker('healthy')}")
    stop = asyncio.Event()
    task = asyncio.create_task(run(s, stop=stop, engine=DeepgramEngine(s)))
    try:
        async with asyncio.timeout(5):
            while await written.get_message(ignore_subscribe_messages=True, timeout=1.0) is None:
                pass
        assert await check(s, "healthy")
        assert not await check(s, "someone-else")
        value = json.loads(await redis.get(keys.worker("healthy")))
        assert value["calls"] == 0 and value["ts"] > time.time() - 5
    finally:
        await written.aclose()
        stop.set()
        async with asyncio.timeout(5):
            await task
    assert not await check(s, "healthy")


def test_check_exit_codes(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check exits 1 without a fresh worker key and 0 with one (this host's, or the named one);
    a sibling replica's key on another host does not make this one healthy."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("ASR_ENGINE", "deepgram")
    r = syncredis.Redis.from_url(redis_server.url)
    try:
        r.flushall()
        assert main(["--check"]) == 1
        r.set(keys.worker("otherhost-7"), json.dumps({"calls": 0, "ts": time.time()}), px=10_000)
        assert main(["--check"]) == 1
        here = f"{socket.gethostname()}-123"
        r.set(keys.worker(here), json.dumps({"calls": 0, "ts": time.time()}), px=10_000)
        assert main(["--check"]) == 0
        r.set(keys.worker("w1"), json.dumps({"calls": 0, "ts": time.time()}), px=10_000)
        assert main(["--check", "--consumer", "w1"]) == 0
        assert main(["--check", "--consumer", "w2"]) == 1
        r.set(keys.worker("old"), json.dumps({"calls": 0, "ts": time.time() - 3600}), px=10_000)
        assert main(["--check", "--consumer", "old"]) == 1
    finally:
        r.flushall()
        r.close()
