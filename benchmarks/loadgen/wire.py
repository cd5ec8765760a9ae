"""A minimal WebSocket client (RFC 6455) for the load generator: cheap frames, batched writes.

The load generator plays hundreds of calls and thousands of watchers in one process, so it does
not pay a full client library per message: frames are built with one ``struct.pack`` and written
straight to the transport, many per ``write``. Client frames are masked with the all-zero key
(RFC 6455 §5.3 lets the client choose any key; servers unmask whatever it is), so masking costs
nothing. Received frames are parsed by hand: text/binary with continuations, ping (answered),
close (answered). No extensions are offered, so no server compresses.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

_ZERO_MASK = b"\x00\x00\x00\x00"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server did not answer the upgrade with ``101 Switching Protocols``."""


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final client frame of ``payload`` (masked with the zero key), ready to write."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _ZERO_MASK + payload


def text_frame(text: str) -> bytes:
    """:func:`frame` of ``text`` as UTF-8."""
    return frame(text.encode())


class RawWebSocket:
    """One client connection. Open with :meth:`open`; ``write`` pre-built frames; ``recv`` texts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.close_code: int | None = None

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, *, timeout_s: float = 10.0
    ) -> RawWebSocket:
        """Connect and upgrade ``ws://host:port/path``.

        Raises:
            HandshakeError: the answer was not 101.
            OSError, TimeoutError, asyncio.IncompleteReadError: no usable answer in ``timeout_s``.
        """
        key = base64.b64encode(os.urandom(16)).decode()
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
            except BaseException:
                writer.close()
                raise
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            writer.close()
            raise HandshakeError(status.decode(errors="replace"))
        return cls(reader, writer)

    def write(self, frames: bytes) -> None:
        """Queue already-built frames on the transport (no await: the kernel buffers)."""
        if not self.closed:
            self.writer.write(frames)

    def send_text(self, text: str) -> None:
        """Queue one text message."""
        self.write(text_frame(text))

    async def recv(self) -> str | None:
        """The next text (or binary, decoded) message; ``None`` once the connection is closed.

        Raises:
            asyncio.IncompleteReadError, OSError: the connection broke without a close frame.
        """
        parts: list[bytes] = []
        while True:
            b0, b1 = await self.reader.readexactly(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b1 & 0x80 else None
            data = await self.reader.readexactly(n)
            if mask is not None:  # servers do not mask; accept it anyway
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
            if opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                if not self.closed:
                    self.closed = True
                    self.writer.write(frame(data[:2], OP_CLOSE))
                self.writer.close()
                return None
            if opcode == OP_PING:
                self.write(frame(data, OP_PONG))
                continue
            if opcode == OP_PONG:
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode(errors="replace")

    async def close(self, code: int = 1000, *, timeout_s: float = 5.0) -> None:
        """Send a close frame, wait (up to ``timeout_s``) for the server's, then drop the socket."""
        if not self.closed:
            self.closed = True
            self.writer.write(frame(struct.pack("!H", code), OP_CLOSE))
            try:
                async with asyncio.timeout(timeout_s):
                    while True:
                        b0, b1 = await self.reader.readexactly(2)
                        n = b1 & 0x7F
                        if n == 126:
                            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                        elif n == 127:
                            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
                        await self.reader.readexactly(n + (4 if b1 & 0x80 else 0))
                        if b0 & 0x0F == OP_CLOSE:
                            break
            except (TimeoutError, asyncio.IncompleteReadError, OSError):
                pass
        self.writer.close()
        try:
            async with asyncio.timeout(timeout_s):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            pass
