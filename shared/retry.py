"""Backoff with jitter for Redis failures, and a guard for cancellations redis-py swallows.

The guard is :func:`cmd`; :class:`CancelGuard` and :class:`GuardedPubSub` apply it to every
command of the clients :func:`shared.redisconn.connect` returns, so a call site that forgets
``cmd()`` is guarded all the same.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError)
"""What a Redis call raises when the server is down, slow or restarting (TimeoutError is an OSError)."""


T = TypeVar("T")

WARN_EVERY_S = 30.0
"""The same failure (logger and message) is logged as a warning at most this often, s; the
others in between go out at debug level and are counted in the next warning's ``repeated``."""

_last_warned: dict[tuple[str, str], tuple[float, int]] = {}

REDIS_RETRIES: Counter[str] = Counter()
"""Failures passed to :meth:`Backoff.retry_after` since the process started whose exception is
a Redis failure (:data:`REDIS_FAILURES`), by the name of the logger that reported them (e.g.
``services.transcriber.worker``). Process-wide: the transcriber's ``redis_errors`` metric sums
those of its own modules, whichever module retried (docs/architecture.md, "Metrics")."""


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
        if isinstance(exc, REDIS_FAILURES):
            REDIS_RETRIES[logger.name] += 1
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

    Every client of :func:`shared.redisconn.connect` already applies this to each of its commands
    (:class:`CancelGuard`, and :class:`GuardedPubSub` for pub/sub), so a forgotten ``cmd()`` no
    longer leaves a cancelled task running. Wrapping a command (or a pipeline's ``execute()``, or
    any other awaitable) in it is still right and harmless: a second check of the same task.

    Like any check of ``Task.cancelling()``, it also raises for a command awaited *after* the
    task caught a cancellation (clean-up in ``finally``) unless the task called ``uncancel()``:
    the command is carried out, then ``CancelledError`` is raised, and the clean-up's next
    command is not sent.
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


class CancelGuard:
    """Mixin for a redis-py asyncio client class: every command goes through :func:`cmd`.

    It overrides ``execute_command``, the one method every single command of
    ``redis.asyncio.Redis`` (HGET, XADD, EVAL, a script's EVALSHA, each page of a SCAN…) and of
    ``RedisCluster`` (whatever node it is routed to, with its redirections and retries) is
    awaited through. Pipelines are other classes (``Pipeline``, ``ClusterPipeline``) whose
    ``execute_command`` only queues; they keep it. Put it first among the bases:
    ``class C(CancelGuard, redis.asyncio.Redis)``.
    """

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """The client's own ``execute_command``, guarded by :func:`cmd`."""
        unguarded = super().execute_command  # type: ignore[misc]  # the client class after us
        return await cmd(unguarded(*args, **options))


class GuardedPubSub(PubSub):
    """redis-py's asyncio ``PubSub`` with :func:`cmd` around its commands (SUBSCRIBE,
    UNSUBSCRIBE, SSUBSCRIBE, PING…: ``execute_command``) and its reads (``get_message``, which
    ``run()`` uses too). Left as they are: ``connect()`` and ``aclose()``, and ``listen()``, which
    reads through ``parse_response`` (callscribe reads with ``get_message``)."""

    async def execute_command(self, *args: Any) -> Any:
        """Send one pub/sub command (its reply comes as a message), guarded by :func:`cmd`."""
        return await cmd(super().execute_command(*args))

    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = 0.0,  # noqa: ASYNC109 (redis-py PubSub signature)
    ) -> Any:
        """The next message, or None after ``timeout`` s, guarded by :func:`cmd`."""
        return await cmd(super().get_message(ignore_subscribe_messages, timeout))

    get_sharded_message = get_message
