"""Backoff with jitter for Redis failures, and a guard for cancellations redis-py swallows."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import RedisError

REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
"""What a Redis call raises when the server is down, slow or restarting (TimeoutError is an OSError)."""


T = TypeVar("T")


class Backoff:
    """Exponential delays with full jitter: ``base_s * 2**n``, at most ``cap_s``; reset on success."""

    def __init__(self, base_s: float = 0.05, cap_s: float = 2.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def reset(self) -> None:
        """A call succeeded: the next failure waits ``base_s`` again."""
        self.failures = 0

    async def wait(self) -> float:
        """Sleep the next delay (seconds, returned) and count the failure."""
        delay: float = min(self.cap_s, self.base_s * 2.0**self.failures) * random.uniform(0.5, 1.0)
        self.failures += 1
        await asyncio.sleep(delay)
        return delay


async def cmd(awaitable: Awaitable[T]) -> T:
    """Await one redis-py command and re-raise a cancellation it swallowed.

    redis-py 8.1's single commands (PUBLISH, HGET…) sometimes return normally after the task was
    cancelled mid-command (pipelines and XREAD were not seen to), which would leave a cancelled
    task running. ``Task.cancelling()`` still counts the request, so we raise it here.
    """
    result = await awaitable
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
    return result
