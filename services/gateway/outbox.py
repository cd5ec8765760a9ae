"""One client's bounded send queue, its sender, and the slow-client policy.

The policy (docs/protocol.md, "Delivery promises": interims may be dropped under load, finals
may not):

* Every client connection has one :class:`Outbox` holding at most ``maxlen`` messages
  (``GatewaySettings.client_queue_max``), drained by the connection's own sender task
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

Memory per client is therefore bounded by ``maxlen`` messages plus the transport's own buffer
(aiohttp waits for the transport to drain past its high-water mark). Cf. django/channels_redis ``BoundedQueue`` and
https://websockets.readthedocs.io/en/stable/topics/broadcast.html.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_LATER = 1013

SLOW_REASON = "client too slow: reconnect and resubscribe with since=<last final id>"


@dataclass(frozen=True)
class CloseRequest:
    """Why the connection is to be closed: WebSocket ``code``, ``reason`` (≤ 123 bytes), and
    whether queued messages are sent first (``drain``)."""

    code: int
    reason: str
    drain: bool


class Outbox:
    """A bounded queue of text frames for one client (see the module docstring for the policy).

    ``maxlen`` is in messages (> 0).
    """

    __slots__ = (
        "_close_evt",
        "_closing",
        "_droppable",
        "_maxlen",
        "_queue",
        "_ready",
        "_space",
        "dropped",
        "sent",
    )

    def __init__(self, maxlen: int) -> None:
        if maxlen <= 0:
            raise ValueError("maxlen must be > 0")
        self._maxlen = maxlen
        self._queue: deque[tuple[str, bool]] = deque()
        self._droppable = 0
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing: CloseRequest | None = None
        self._close_evt = asyncio.Event()
        self.dropped = 0
        self.sent = 0

    # ------------------------------------------------------------------ producer side (sync)

    @property
    def closing(self) -> CloseRequest | None:
        """The close requested so far, or None while the connection is to stay open."""
        return self._closing

    def __len__(self) -> int:
        return len(self._queue)

    def has_space(self) -> bool:
        """True when a :meth:`put` now would not evict or overflow."""
        return len(self._queue) < self._maxlen

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
        if len(queue) >= self._maxlen:
            if self._droppable:
                self._evict_oldest_droppable()
            elif droppable:
                self.dropped += 1
                return False
            else:
                self.close(CLOSE_TRY_LATER, SLOW_REASON, drain=False)
                return False
        queue.append((text, droppable))
        if droppable:
            self._droppable += 1
        self._ready.set()
        return True

    def _evict_oldest_droppable(self) -> None:
        queue = self._queue
        for i, (_, droppable) in enumerate(queue):
            if droppable:
                del queue[i]
                self._droppable -= 1
                self.dropped += 1
                return

    def close(self, code: int, reason: str, *, drain: bool) -> None:
        """Ask for the connection to be closed; a close that does not drain overrides one that does.

        ``drain`` = send what is queued first (the call ended); otherwise discard it.
        """
        if self._closing is not None and (self._closing.drain is False or drain):
            return
        self._closing = CloseRequest(code, reason[:123], drain)
        if not drain:
            self._queue.clear()
            self._droppable = 0
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
            if droppable:
                self._droppable -= 1
            self._space.set()
            async with asyncio.timeout(send_timeout_s):
                await send(text)
            self.sent += 1
