"""Backoff with jitter for Redis failures, and a guard for cancellations redis-py swallows."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import RedisError

REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
"""What a Redis call raises when the server is down, slow or restarting (TimeoutError is an OSError)."""


T = TypeVar("T")

WARN_EVERY_S = 30.0
"""The same failure (logger and message) is logged as a warning at most this often, s; the
others in between go out at debug level and are counted in the next warning's ``repeated``."""

_last_warned: dict[tuple[str, str], tuple[float, int]] = {}

FAILURES: Counter[str] = Counter()
"""Failures passed to :meth:`Backoff.retry_after` since the process started, by the name of the
logger that reported them (e.g. ``services.transcriber.worker``). Process-wide: the
transcriber's metrics count those of its Redis loops (docs/architecture.md, "Metrics")."""


class Backoff:
    """Exponential delays with jitter: ``base_s * 2**n`` capped at ``cap_s`` (seconds), each
    drawn between half and all of that; ``failures`` counts them until :meth:`reset`."""

    def __init__(self, base_s: float = 0.05, cap_s: float = 2.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def reset(self) -> None:
        """A call succeeded: the next failure waits ``base_s`` again."""
        self.failures = 0

    def next_delay_s(self) -> float:
        """Count one more failure and return how long to wait before the next try, s."""
        delay: float = min(self.cap_s, self.base_s * 2.0**self.failures) * random.uniform(0.5, 1.0)
        self.failures += 1
        return delay

    async def wait(self) -> float:
        """Sleep the next delay (seconds, returned) and count the failure."""
        delay = self.next_delay_s()
        await asyncio.sleep(delay)
        return delay

    async def retry_after(
        self, exc: BaseException, logger: logging.Logger, msg: str, **extra: object
    ) -> None:
        """Log one line for a failure (``error``, ``retry_in_s``, ``extra``), then wait.

        The line goes out before the wait, so it says when the next try will be. It is a warning
        the first time and then at most every :data:`WARN_EVERY_S` per logger and message (with
        ``repeated``: the failures logged at debug level since), so a long outage does not
        flood the log.
        """
        delay = self.next_delay_s()
        FAILURES[logger.name] += 1
        fields = {**extra, "error": exc.__class__.__name__, "retry_in_s": round(delay, 3)}
        now = time.monotonic()
        key = (logger.name, msg)
        last, quiet = _last_warned.get(key, (-WARN_EVERY_S, 0))
        if now - last >= WARN_EVERY_S:
            if quiet:
                fields["repeated"] = quiet
            _last_warned[key] = (now, 0)
            logger.warning(msg, extra=fields)
        else:
            _last_warned[key] = (last, quiet + 1)
            logger.debug(msg, extra=fields)
        await asyncio.sleep(delay)


async def cmd(awaitable: Awaitable[T]) -> T:
    """Await one redis-py command and re-raise a cancellation it swallowed.

    redis-py 8.1's single commands (PUBLISH, HGET…) sometimes return normally after the task was
    cancelled mid-command (pipelines and XREAD were not seen to), which would leave a cancelled
    task running; and a pub/sub command cancelled while its connection closes can turn the
    cancellation into an ``AttributeError`` of its own. ``Task.cancelling()`` still counts the
    request, so in both cases we raise ``CancelledError`` here.
    """
    task = asyncio.current_task()
    try:
        result = await awaitable
    except Exception:
        if task is not None and task.cancelling():
            raise asyncio.CancelledError() from None
        raise
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()
    return result
