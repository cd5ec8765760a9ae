"""The shared decode queue: finals before interims, a bounded number of fresh interims."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.transcriber.whisper_queue import DecodeQueue
from shared.errors import AsrError


async def _blocked(queue: DecodeQueue) -> tuple[threading.Event, asyncio.Task[str]]:
    """Occupy the queue's only worker until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        gate.wait(10)
        return "held"

    task = asyncio.create_task(queue.final(hold))
    await asyncio.to_thread(started.wait, 10)
    return gate, task


async def test_finals_run_before_interims_queued_earlier() -> None:
    """With the worker busy, an interim then a final then an interim run as: final, interim, interim."""
    queue = DecodeQueue(1, interim_max_wait_s=60)
    order: list[str] = []
    try:
        gate, held = await _blocked(queue)
        jobs = [
            asyncio.create_task(queue.interim(lambda: order.append("interim 1"))),
            asyncio.create_task(queue.final(lambda: order.append("final"))),
            asyncio.create_task(queue.interim(lambda: order.append("interim 2"))),
        ]
        await asyncio.sleep(0)  # one loop turn: the new tasks submit their jobs
        assert queue.depth == 3
        gate.set()
        await asyncio.gather(held, *jobs)
    finally:
        queue.shutdown()
    assert order == ["final", "interim 1", "interim 2"]


async def test_interims_beyond_the_bound_drop_the_oldest() -> None:
    """max_interims=1: a second queued interim drops the first, which resolves to None unrun."""
    queue = DecodeQueue(1, max_interims=1, interim_max_wait_s=60)
    try:
        gate, held = await _blocked(queue)
        first = asyncio.create_task(queue.interim(lambda: "first"))
        await asyncio.sleep(0)  # one loop turn: the new tasks submit their jobs
        assert queue.depth == 1
        second = asyncio.create_task(queue.interim(lambda: "second"))
        assert await first is None
        gate.set()
        assert await second == "second" and await held == "held"
        assert queue.stats["interims_dropped"] == 1
    finally:
        queue.shutdown()


async def test_a_stale_interim_is_dropped_a_final_never() -> None:
    """An interim that waited longer than interim_max_wait_s resolves to None; a final still runs."""
    queue = DecodeQueue(1, interim_max_wait_s=0.0)
    try:
        gate, held = await _blocked(queue)
        interim = asyncio.create_task(queue.interim(lambda: "late"))
        final = asyncio.create_task(queue.final(lambda: "final"))
        await asyncio.sleep(0)  # one loop turn: the new tasks submit their jobs
        assert queue.depth == 2
        gate.set()
        assert await final == "final" and await interim is None and await held == "held"
    finally:
        queue.shutdown()


async def test_shutdown_fails_queued_jobs_and_refuses_new_ones() -> None:
    """After shutdown() a queued decode raises AsrError, and so does a new submission."""
    queue = DecodeQueue(1)
    gate, held = await _blocked(queue)
    queued = asyncio.create_task(queue.final(lambda: "never"))
    await asyncio.sleep(0)  # one loop turn: the new tasks submit their jobs
    assert queue.depth == 1
    queue.shutdown()
    gate.set()
    with pytest.raises(AsrError):
        await queued
    with pytest.raises(AsrError):
        await queue.final(lambda: "no")
    assert await held == "held"


async def test_an_error_in_a_decode_reaches_its_caller() -> None:
    """A job that raises hands its exception to the awaiting caller; the worker goes on."""
    queue = DecodeQueue(1)
    try:

        def boom() -> None:
            raise ValueError("bad audio")

        with pytest.raises(ValueError, match="bad audio"):
            await queue.final(boom)
        assert await queue.final(lambda: 7) == 7
    finally:
        queue.shutdown()
