"""The worker health record ``cs:worker:<consumer>``: what the lease loop writes, ``--check`` reads."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from services.transcriber.health import check, is_fresh
from services.transcriber.lease import Lease, health_ttl_ms
from shared import keys
from shared.redisconn import connect
from shared.schema import WorkerHealth
from tests.transcriber.dgutil import settings

WAIT_S = 15.0


def test_record_round_trips_through_its_redis_value() -> None:
    """What ``to_redis`` writes, ``from_redis`` reads back (bytes as GET gives, or str)."""
    record = WorkerHealth(calls=3, ts=1_700_000_000.125, asr_ok=False)
    raw = record.to_redis()
    assert json.loads(raw) == {"calls": 3, "ts": 1_700_000_000.125, "asr_ok": False}
    assert WorkerHealth.from_redis(raw.encode()) == record
    assert WorkerHealth.from_redis(raw) == record


def test_older_writers_value_is_read() -> None:
    """The value as json.dumps wrote it before the model (spaces, any order), and one without
    ``asr_ok`` (it then counts as true)."""
    old = json.dumps({"calls": 2, "ts": 12.5, "asr_ok": True})
    assert WorkerHealth.from_redis(old) == WorkerHealth(calls=2, ts=12.5)
    assert WorkerHealth.from_redis('{"ts": 12.5, "calls": 0}').asr_ok is True


def test_freshness_of_a_written_value() -> None:
    """Fresh: written at most ``max_age_s`` before ``now_s`` and ``asr_ok`` not false."""
    raw = WorkerHealth(calls=0, ts=1000.0).to_redis()
    assert is_fresh(raw, now_s=1000.0, max_age_s=0.3)
    assert is_fresh(raw, now_s=1000.3, max_age_s=0.3)
    assert not is_fresh(raw, now_s=1000.4, max_age_s=0.3)
    down = WorkerHealth(calls=0, ts=1000.0, asr_ok=False).to_redis()
    assert not is_fresh(down, now_s=1000.0, max_age_s=0.3)


@pytest.mark.parametrize(
    "raw",
    [
        None,  # no key
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"calls": 0}',  # no ts
        b'{"ts": 1000.0}',  # no calls
        b'{"calls": -1, "ts": 1000.0}',
        b'{"calls": "many", "ts": 1000.0}',
        b'{"calls": 0, "ts": "soon"}',
        b'{"calls": 0, "ts": 1e400}',  # infinite: would be fresh for ever
        b'{"calls": 0, "ts": 1000.0, "asr_ok": 1}',
        b'{"calls": 0, "ts": 1000.0, "asr_ok": "yes"}',
    ],
)
def test_bad_value_is_a_value_error_and_unhealthy(raw: bytes | None) -> None:
    """A missing or malformed value raises ValueError and is never fresh."""
    with pytest.raises(ValueError):
        WorkerHealth.from_redis(raw)
    assert not is_fresh(raw, now_s=1000.0, max_age_s=3600.0)


async def _next_write(written: aioredis.client.PubSub) -> None:
    """Wait for the next keyspace notification of the subscribed key."""
    async with asyncio.timeout(WAIT_S):
        while await written.get_message(ignore_subscribe_messages=True, timeout=1.0) is None:
            pass


async def test_lease_writes_what_check_reads(redis_url: str, redis: aioredis.Redis) -> None:
    """The lease loop's value is read by ``check``: unhealthy while ``asr_ok`` is false, healthy
    once the probe flips it, gone after ``drop_health``; a garbage value is unhealthy."""
    s = settings(redis_url=redis_url, consumer="leased")
    key = keys.worker("leased")
    await redis.config_set("notify-keyspace-events", "K$")
    written = redis.pubsub()
    await written.subscribe(f"__keyspace@0__:{key}")
    own = connect(redis_url)
    probe_verdict = {"asr_ok": False}
    lease = Lease(own, s, {}, {}, probe_verdict)
    task = asyncio.create_task(lease.run())
    try:
        await _next_write(written)
        record = WorkerHealth.from_redis(await redis.get(key))
        assert record.calls == 0 and record.asr_ok is False
        assert abs(record.ts - time.time()) < WAIT_S
        assert 0 < await redis.pttl(key) <= health_ttl_ms(s)
        assert lease.heartbeat_at is not None and lease.redis_ok
        assert not await check(s, "leased")
        probe_verdict["asr_ok"] = True
        while not WorkerHealth.from_redis(await redis.get(key)).asr_ok:
            await _next_write(written)  # (a write from before the flip may come first)
        assert await check(s, "leased")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lease.drop_health()
        await written.aclose()
        await own.aclose()
    assert not await redis.exists(key)
    assert not await check(s, "leased")
    await redis.set(key, b"not json", px=10_000)
    assert not await check(s, "leased")
