"""Sums over the key partitions (:mod:`shared.keys`), for assertions about all calls at once."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared import keys


async def job_count(redis: aioredis.Redis) -> int:
    """Entries in every partition's job stream."""
    return sum([int(await redis.xlen(keys.jobs(t))) for t in keys.TAGS])


async def active_count(redis: aioredis.Redis) -> int:
    """CallSids in every partition's active set."""
    return sum([int(await redis.scard(keys.active(t))) for t in keys.TAGS])


async def pending_count(redis: aioredis.Redis) -> int:
    """Jobs delivered and not acknowledged, every partition (0 where the group is missing)."""
    total = 0
    for tag in keys.TAGS:
        if await redis.exists(keys.jobs(tag)):
            info: dict[str, Any] = await redis.xpending(keys.jobs(tag), keys.JOBS_GROUP)
            total += int(info["pending"])
    return total
