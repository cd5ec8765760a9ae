"""Helpers for ingest integration tests: a running service and readers of what it wrote."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.ingest.app import run
from shared import keys
from shared.audio import wav_to_ulaw_tracks
from shared.schema import AudioFrame
from shared.settings import IngestSettings
from tests import recordings

WAIT_S = 10.0
"""Upper bound of any wait in these tests, s."""


@asynccontextmanager
async def ingest_running(redis_url: str, **overrides: Any) -> AsyncIterator[int]:
    """Run ingest on 127.0.0.1 port 0 against ``redis_url``; yield the port; stop it after."""
    # insecure unless a test overrides it: tests/security/ covers the secured ingest
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "frame_ms": 100,
        "reorder_ms": 40,
        "twilio_insecure": True,
    }
    settings = IngestSettings(**{**fields, "redis_url": redis_url, **overrides})
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, stop=stop, bound=bound))
    try:
        async with asyncio.timeout(WAIT_S):
            port = await asyncio.shield(bound)
        yield port
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S + 10):
            await task


@pytest.fixture
def ingest(redis_url: str) -> Callable[..., AbstractAsyncContextManager[int]]:
    """``async with ingest(**settings) as port``: an ingest service on the test Redis."""
    return lambda **overrides: ingest_running(redis_url, **overrides)


@pytest.fixture
def call_tracks() -> list[bytes]:
    """The first 2 s of the two-party recording, as two mu-law tracks."""
    tracks = wav_to_ulaw_tracks(recordings.wav("call_dentist"))
    return [t[: 8 * 2000] for t in tracks]


async def read_audio(redis: aioredis.Redis, call_sid: str) -> list[AudioFrame]:
    """Every entry of the call's audio stream up to and including eof (waits for eof)."""
    frames: list[AudioFrame] = []
    last = "0"
    async with asyncio.timeout(WAIT_S):
        while not frames or not frames[-1].eof:
            reply = await redis.xread({keys.audio(call_sid): last}, block=100)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    frames.append(AudioFrame.from_redis(fields))
    return frames


def expected_channels(messages: list[tuple[float, str]], channels: int) -> list[bytearray]:
    """An oracle: each media payload placed at timestamp*8 on its track; silence elsewhere."""
    out = [bytearray() for _ in range(channels)]
    for _, text in messages:
        msg = json.loads(text)
        if msg["event"] != "media":
            continue
        ch = 0 if msg["media"]["track"] == "inbound" else 1
        start = int(msg["media"]["timestamp"]) * 8
        data = base64.b64decode(msg["media"]["payload"])
        buf = out[ch]
        if len(buf) < start + len(data):
            buf.extend(b"\xff" * (start + len(data) - len(buf)))
        buf[start : start + len(data)] = data
    end = max(len(b) for b in out)
    for b in out:
        b.extend(b"\xff" * (end - len(b)))
    return out


def assert_reassembles(frames: list[AudioFrame], want: list[bytearray]) -> None:
    """The audio entries are contiguous from 0, end in eof at the end, and equal ``want``."""
    assert frames and frames[-1].eof
    t = 0
    for f in frames[:-1]:
        assert f.t_ms == t
        t += len(f.pcmu) // len(want) // 8
    assert frames[-1].t_ms == t == len(want[0]) // 8
    pcmu = b"".join(f.pcmu for f in frames[:-1])
    for ch, data in enumerate(want):
        assert pcmu[ch :: len(want)] == bytes(data)
