"""One client's bounded send queue, its sender, and the slow-client policy.

The policy (docs/protocol.md, "Delivery promises": interims may be dropped under load, finals
may not):

* Every client connection has one :class:`Outbox` holding at most ``maxlen`` messages
  (``GatewaySettings.client_queue_max``) and ``max_chars`` characters of them
  (``client_queue_max_bytes``; JSON is mostly ASCII, so ≈ bytes), drained by the connection's own sender task
  (:meth:`Outbox.pump`) which gives each send at most ``send_timeout_s``.
* The hub never waits for a client: :meth:`Outbox.put` is synchronous and O(1) unless the
  queue is full, so one slow client never delays the others.
* When the queue is full, the oldest queued *droppable* message (an interim result) is
  dropped to make room; a droppable message that finds no droppable one to evict is itself
  dropped. Both are counted in :attr:`Outbox.dropped`.
* When the queue is full of messages that must not be lost (finals, control messages), the
  client is disconnected with close code 1013 (try again later) and a reason telling it to
  resubscribe with ``since`` = the last final ID it got: finals are never dropped silently.
* A send that takes longer than ``send_timeout_s`` disconnects the client with 1013 as well.

Memory per client is therefore bounded by ``maxlen`` messages and ``max_chars`` characters
(a message larger than ``max_chars`` on its own still passes when the queue is empty) plus the transport's own buffer
(aiohttp waits for the transport to drain past its high-water mark). Cf. django/channels_redis ``BoundedQueue`` and
https://websockets.readthedocs.io/en/stable/topics/broadcast.html.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from websockets.frames import CloseCode

SLOW_REASON = "client too slow: reconnect and resubscribe with since=<last final id>"


DIRECT_HIGH_WATER_BYTES = 64 * 1024
"""A client whose socket holds more unsent bytes than this gets its messages through the queue."""


class _Transport(Protocol):
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def write(self, data: bytes) -> None: ...


class DirectWriter:
    """Writes a text message to a client's socket at once, while the socket keeps up.

    Calling it returns False (nothing written) when the transport is closing, the WebSocket
    close has begun (``is_closed()``), or more than :data:`DIRECT_HIGH_WATER_BYTES` are still
    unsent: the message then goes through the :class:`Outbox` queue and its policy. Otherwise it
    writes one unmasked, unfragmented text frame (RFC 6455 §5.2:
    https://www.rfc-editor.org/rfc/rfc6455#section-5.2) and returns True. Every write is a whole
    frame, so these writes interleave safely with the WebSocket library's own (pings, the
    queue's sends, the close frame).

    Why: a delivery through the queue costs a task wake-up and a timeout context per message;
    at 1,000 watchers those were about a fifth of the gateway's CPU (py-spy under
    benchmarks/load.py).
    """

    __slots__ = ("_is_closed", "_transport")

    def __init__(self, transport: _Transport, is_closed: Callable[[], bool]) -> None:
        self._transport = transport
        self._is_closed = is_closed

    def __call__(self, text: str) -> bool:
        transport = self._transport
        if (
            transport.is_closing()
            or self._is_closed()
            or transport.get_write_buffer_size() > DIRECT_HIGH_WATER_BYTES
        ):
            return False
        data = text.encode()
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 127, n)
        transport.write(header + data)
        return True


@dataclass(frozen=True)
class CloseRequest:
    """Why the connection is to be closed: WebSocket ``code``, ``reason`` (≤ 123 bytes), and
    whether queued messages are sent first (``drain``)."""

    code: CloseCode
    reason: str
    drain: bool


class Outbox:
    """A bounded queue of text frames for one client (see the module docstring for the policy).

    ``maxlen`` is in messages (> 0), ``max_chars`` in characters of queued text (> 0; None =
    no bound). The queue is "full" when either is reached. ``direct``, when set, is tried first for each message put
    while the queue is empty (see :class:`DirectWriter`); a message it writes counts as sent.
    """

    __slots__ = (
        "_chars",
        "_close_evt",
        "_closing",
        "_droppable",
        "_max_chars",
        "_maxlen",
        "_queue",
        "_ready",
        "_space",
        "direct",
        "dropped",
        "sent",
    )

    def __init__(self, maxlen: int, max_chars: int | None = None) -> None:
        if maxlen <= 0 or (max_chars is not None and max_chars <= 0):
            raise ValueError("maxlen and max_chars must be > 0")
        self._maxlen = maxlen
        self._max_chars = max_chars if max_chars is not None else 1 << 62
        self._chars = 0
        self._queue: deque[tuple[str, bool]] = deque()
        self._droppable = 0
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing: CloseRequest | None = None
        self._close_evt = asyncio.Event()
        self.dropped = 0
        self.sent = 0
        self.direct: Callable[[str], bool] | None = None

    # ------------------------------------------------------------------ producer side (sync)

    @property
    def closing(self) -> CloseRequest | None:
        """The close requested so far, or None while the connection is to stay open."""
        return self._closing

    def __len__(self) -> int:
        return len(self._queue)

    def has_space(self) -> bool:
        """True when a :meth:`put` now would not evict or overflow (by count, or past half the
        character bound: room left for a message)."""
        return len(self._queue) < self._maxlen and self._chars * 2 < self._max_chars

    async def wait_space(self) -> bool:
        """Wait until :meth:`has_space` (for history replay, which may wait for the client).

        Returns False when the outbox is closing instead (stop replaying).
        """
        while self._closing is None and not self.has_space():
            self._space.clear()
            await self._space.wait()
        return self._closing is None

    def put(self, text: str, *, droppable: bool = False) -> bool:
        """Queue one text frame; ``droppable`` marks an interim result the policy may drop.

        Returns False when the message was not queued (dropped, or the outbox is closing).
        """
        if self._closing is not None:
            return False
        queue = self._queue
        if not queue and self.direct is not None and self.direct(text):
            self.sent += 1
            return True
        size = len(text)
        while queue and (len(queue) >= self._maxlen or self._chars + size > self._max_chars):
            if self._droppable:
                self._evict_oldest_droppable()
            elif droppable:
                self.dropped += 1
                return False
            else:
                self.close(CloseCode.TRY_AGAIN_LATER, SLOW_REASON, drain=False)
                return False
        queue.append((text, droppable))
        self._chars += size
        if droppable:
            self._droppable += 1
        self._ready.set()
        return True

    def _evict_oldest_droppable(self) -> None:
        queue = self._queue
        for i, (text, droppable) in enumerate(queue):
            if droppable:
                del queue[i]
                self._chars -= len(text)
                self._droppable -= 1
                self.dropped += 1
                return

    def close(self, code: CloseCode, reason: str, *, drain: bool) -> None:
        """Ask for the connection to be closed; a close that does not drain overrides one that does.

        ``drain`` = send what is queued first (the call ended); otherwise discard it.
        """
        if self._closing is not None and (self._closing.drain is False or drain):
            return
        self._closing = CloseRequest(code, reason[:123], drain)
        if not drain:
            self._queue.clear()
            self._droppable = 0
            self._chars = 0
        self._ready.set()
        self._space.set()
        self._close_evt.set()

    # ------------------------------------------------------------------ consumer side

    async def wait_closing(self) -> CloseRequest:
        """Return once a close has been requested."""
        await self._close_evt.wait()
        closing = self._closing
        if closing is None:  # the event is only ever set together with _closing
            raise RuntimeError("close event without a close request")
        return closing

    async def pump(self, send: Callable[[str], Awaitable[None]], send_timeout_s: float) -> None:
        """Send queued frames in order with ``send``, each within ``send_timeout_s``.

        Returns when a close has been requested and (if it drains) the queue is empty.

        Raises:
            TimeoutError: one send took longer than ``send_timeout_s`` (a slow client).
            Exception: whatever ``send`` raises when the peer is gone.
        """
        queue = self._queue
        while True:
            if not queue:
                if self._closing is not None:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._closing is not None and not self._closing.drain:
                return
            text, droppable = queue.popleft()
            self._chars -= len(text)
            if droppable:
                self._droppable -= 1
            self._space.set()
            async with asyncio.timeout(send_timeout_s):
                await send(text)
            self.sent += 1
