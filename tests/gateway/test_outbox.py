"""The slow-client policy of :class:`services.gateway.outbox.Outbox`, without sockets."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import CloseCode

from services.gateway.outbox import Outbox


async def test_full_queue_drops_oldest_interim_first() -> None:
    """when full, the oldest queued interim is evicted to make room, and counted."""
    box = Outbox(3)
    box.put("i1", droppable=True)
    box.put("f1")
    box.put("i2", droppable=True)
    assert box.put("f2")
    assert box.put("f3")
    assert box.dropped == 2 and box.closing is None
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    box.close(CloseCode.NORMAL_CLOSURE, "call ended", drain=True)  # what is left goes out
    async with asyncio.timeout(1):
        await box.pump(send, 1.0)
    assert sent == ["f1", "f2", "f3"]


def test_interim_into_queue_full_of_finals_is_dropped() -> None:
    """an interim finding only finals is dropped itself; the connection stays."""
    box = Outbox(2)
    box.put("f1")
    box.put("f2")
    assert box.put("i", droppable=True) is False
    assert box.dropped == 1 and box.closing is None


def test_final_overflow_closes_1013_never_drops_silently() -> None:
    """a final that finds the queue full of finals closes the client with 1013 and since."""
    box = Outbox(2)
    box.put("f1")
    box.put("f2")
    assert box.put("f3") is False
    assert box.closing is not None
    assert box.closing.code == CloseCode.TRY_AGAIN_LATER and "since" in box.closing.reason
    assert box.put("f4") is False


async def test_pump_sends_in_order_and_drains_before_close() -> None:
    """the sender sends in order and, on a draining close, empties the queue first."""
    box = Outbox(10)
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    for text in ("a", "b", "c"):
        box.put(text)
    box.close(CloseCode.NORMAL_CLOSURE, "call ended", drain=True)
    async with asyncio.timeout(1):
        await box.pump(send, 1.0)
    assert sent == ["a", "b", "c"]


async def test_pump_times_out_on_a_stuck_send() -> None:
    """a send that does not complete within send_timeout_s raises TimeoutError."""
    box = Outbox(10)
    box.put("a")
    stuck = asyncio.Event()

    async def send(text: str) -> None:
        await stuck.wait()

    with pytest.raises(TimeoutError):
        await box.pump(send, 0.01)
