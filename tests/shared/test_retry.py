"""shared.retry: backoff bounds, the failure log line, and the swallowed-cancel guard."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.retry import Backoff, cmd


def test_delays_double_up_to_the_cap_with_jitter_and_reset() -> None:
    """Delay n lies in [½, 1] × min(cap, base·2ⁿ); reset starts again from base."""
    b = Backoff(base_s=0.1, cap_s=0.5)
    for n in range(6):
        top = min(0.5, 0.1 * 2**n)
        assert top / 2 <= b.next_delay_s() <= top
    assert b.failures == 6
    b.reset()
    assert b.failures == 0 and b.next_delay_s() <= 0.1


async def test_retry_after_logs_the_coming_wait_then_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One warning with error, retry_in_s and the caller's fields, then a sleep of that length."""
    b = Backoff(base_s=0.01, cap_s=0.01)
    logger = logging.getLogger("test.retry")
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        t0 = loop.time()
        await b.retry_after(ConnectionError("x"), logger, "redis unavailable", call_sid="CA1")
    [record] = caplog.records
    assert record.getMessage() == "redis unavailable"
    assert (record.error, record.call_sid) == ("ConnectionError", "CA1")  # type: ignore[attr-defined]
    assert 0.005 <= record.retry_in_s <= 0.01  # type: ignore[attr-defined]
    assert loop.time() - t0 >= 0.004


async def test_cmd_reraises_a_cancellation_the_command_swallowed() -> None:
    """A command that returns normally after its task was cancelled still ends the task."""

    async def swallows() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"  # what redis-py 8.1 sometimes does
        return "slept"

    async def caller() -> str:
        return await cmd(swallows())

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_redis_failures_are_counted_by_logger_and_others_are_not() -> None:
    """A retried Redis failure (RedisError, OSError) counts under its logger's name in
    REDIS_RETRIES, what the transcriber's redis_errors metric sums; another failure (a speech
    engine's reconnect) does not."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from shared.errors import AsrError
    from shared.retry import REDIS_RETRIES

    logger = logging.getLogger("test.retry.count")
    b = Backoff(base_s=0.001, cap_s=0.001)
    before = REDIS_RETRIES[logger.name]
    await b.retry_after(RedisConnectionError("down"), logger, "redis unavailable")
    await b.retry_after(TimeoutError("slow"), logger, "redis unavailable")
    await b.retry_after(AsrError("deepgram dropped", retryable=True), logger, "deepgram reconnect")
    assert REDIS_RETRIES[logger.name] - before == 2
