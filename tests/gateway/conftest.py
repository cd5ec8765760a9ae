"""Gateway test helpers: a running gateway on port 0, and a fake transcriber writing Redis."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection

from services.gateway.app import run
from shared import keys
from shared.schema import (
    CallEnded,
    CallMeta,
    CallStarted,
    CallStatus,
    EndEvent,
    TranscriptEvent,
    Word,
)
from shared.settings import GatewaySettings

WAIT_S = 5.0
"""Upper bound of any single wait in these tests."""


def make_settings(redis_url: str, **overrides: Any) -> GatewaySettings:
    """Settings for a test gateway on 127.0.0.1:0, without authentication unless overridden
    (tests/security/ covers authentication)."""
    values: dict[str, Any] = {
        "gateway_auth": "none",
        "redis_url": redis_url,
        "host": "127.0.0.1",
        "port": 0,
        "redis_socket_timeout_s": 5.0,
        "send_timeout_s": 2.0,
        "redis_timeout_s": 2.0,
        "reconnect_min_s": 0.02,
        "reconnect_max_s": 0.2,
        "ping_interval_s": 0.5,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[int]:
    """Run ``services.gateway.app.run`` and yield its port; stop it on exit."""
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, stop=stop, bound=bound))
    try:
        async with asyncio.timeout(WAIT_S):
            port = await bound
        yield port
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S * 2):
            await task


@pytest.fixture
def gateway(redis_url: str) -> Callable[..., Any]:
    """``async with gateway(**settings) as port``: a gateway on the test Redis."""

    def start(**overrides: Any) -> Any:
        return running_gateway(make_settings(redis_url, **overrides))

    return start


async def recv_json(ws: ClientConnection, timeout_s: float = WAIT_S) -> Any:
    """The next message of ``ws``, parsed."""
    async with asyncio.timeout(timeout_s):
        return json.loads(await ws.recv())


class FakeTranscriber:
    """Writes one call into Redis as the transcriber does (docs/protocol.md, "Redis keys")."""

    def __init__(self, r: aioredis.Redis, call_sid: str, channels: int = 2) -> None:
        self.r = r
        self.sid = call_sid
        self.meta = CallMeta(
            call_sid=call_sid,
            stream_sid="MZ" + call_sid[2:],
            account_sid="AC1",
            tracks=["inbound", "outbound"][:channels],
            channels=channels,
        )
        self.segment = 0

    async def start(self) -> None:
        """SADD active, HSET meta, PUBLISH call_started."""
        await self.r.sadd(keys.active(keys.tag_of(self.sid)), self.sid)
        await self.r.hset(keys.meta(self.sid), mapping=self.meta.to_redis())
        await self.r.publish(keys.CALL_EVENTS, CallStarted(call=self.meta).to_json())

    def event(self, text: str, *, final: bool, channel: int = 0) -> TranscriptEvent:
        """A transcript event of the current segment."""
        start = float(self.segment)
        return TranscriptEvent(
            call_sid=self.sid,
            segment=self.segment,
            channel=channel,
            speaker="caller" if channel == 0 else "callee",
            is_final=final,
            speech_final=final,
            start=start,
            end=start + 0.5,
            text=text,
            confidence=0.9,
            words=[
                Word(word=w, start=start, end=start + 0.1, confidence=0.9) for w in text.split()
            ],
        )

    async def interim(self, text: str, channel: int = 0) -> None:
        """PUBLISH an interim (never in history)."""
        await self.r.publish(
            keys.live(self.sid), self.event(text, final=False, channel=channel).to_json()
        )

    async def final(self, text: str, channel: int = 0) -> str:
        """XADD the final to history, then PUBLISH it with its ID; returns the ID."""
        event = self.event(text, final=True, channel=channel)
        entry_id = await self.r.xadd(keys.transcript(self.sid), event.to_history())
        event.id = entry_id.decode()
        await self.r.publish(keys.live(self.sid), event.to_json())
        self.segment += 1
        return event.id

    async def end(self) -> None:
        """Mark ended, SREM active, PUBLISH end and call_ended."""
        ended = self.meta.model_copy(
            update={"status": CallStatus.ENDED, "ended_at": self.meta.started_at + 1}
        )
        await self.r.hset(keys.meta(self.sid), mapping=ended.to_redis())
        await self.r.srem(keys.active(keys.tag_of(self.sid)), self.sid)
        await self.r.publish(keys.live(self.sid), EndEvent(call_sid=self.sid).to_json())
        await self.r.publish(keys.CALL_EVENTS, CallEnded(call=ended).to_json())


async def numsub(r: aioredis.Redis, channel: str) -> int:
    """PUBSUB NUMSUB of one channel."""
    result = await r.pubsub_numsub(channel)
    return int(result[0][1])


async def wait_numsub(r: aioredis.Redis, channel: str, expected: int) -> None:
    """Poll PUBSUB NUMSUB until it equals ``expected`` (there is no event to await across
    processes)."""
    async with asyncio.timeout(WAIT_S):
        while await numsub(r, channel) != expected:  # noqa: ASYNC110 (state in Redis, no event)
            await asyncio.sleep(0.01)


class RawSlowClient:
    """A WebSocket client that really stops reading: sans-I/O websockets over a socket with a
    tiny receive buffer (the asyncio client reads ahead into memory, which hides slowness)."""

    def __init__(self) -> None:
        self.proto: Any = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.early: list[Any] = []

    async def open(self, port: int, path: str) -> None:
        """Connect and complete the handshake."""
        from websockets.client import ClientProtocol
        from websockets.http11 import Response
        from websockets.uri import parse_uri

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        async with asyncio.timeout(WAIT_S):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
            self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{path}"), max_size=None)
            self.proto.send_request(self.proto.connect())
            self._flush()
            while not any(isinstance(e, Response) for e in self.early):
                self.proto.receive_data(await self.reader.read(4096))
                self.early.extend(self.proto.events_received())

    def _flush(self) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(self.proto.data_to_send()))

    def send_text(self, text: str) -> None:
        """Send one text frame."""
        self.proto.send_text(text.encode())
        self._flush()

    async def read_all(self) -> tuple[list[Any], int | None, str]:
        """Read until the server closes: (parsed text messages, close code, close reason)."""
        from websockets.frames import Opcode

        assert self.reader is not None and self.writer is not None
        frames = [e for e in self.early if hasattr(e, "opcode")]
        async with asyncio.timeout(WAIT_S * 2):
            while self.proto.close_rcvd is None:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.proto.receive_data(data)
                frames.extend(self.proto.events_received())
        self.writer.close()
        texts = [json.loads(f.data) for f in frames if f.opcode == Opcode.TEXT]
        close = self.proto.close_rcvd
        return texts, (close.code if close else None), (close.reason if close else "")
