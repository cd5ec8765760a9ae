"""Watchers of the load: clients of ``/client`` (the tutorial protocol) and ``/v1/ws``.

A watcher records when it was subscribed, the loop time it first saw each marker word
(``mk<number>``) in a transcript, and how many finals it received. It reads frames with
:class:`~benchmarks.loadgen.wire.RawWebSocket` and parses no JSON it does not need: a marker is
found with a regex over the raw text, a final by its ``"is_final": true``.

* ``/client``: the server sends a JSON list of live callSids; if the call is not in it yet the
  watcher closes and retries (the tutorial only takes calls already live; callscribe lists a
  call once ingest has written its start), else it answers the callSid and reads until the
  server closes (both servers close when the call ends).
* ``/v1/ws``: ``{"type": "subscribe", "call_sid": …, "since": null}`` (live only), retried
  while the answer is ``unknown_call``; subscribed at ``{"type": "subscribed"}``; done at
  ``{"type": "end"}``.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

from benchmarks.loadgen.wire import HandshakeError, RawWebSocket

_MARK = re.compile(r"\bmk(\d+)\b")
_FINAL = re.compile(r'"is_final": ?true')
RETRY_S = 0.05
"""First wait before a watcher asks again for a call not live yet (doubles, up to 0.5 s)."""


@dataclass
class Watcher:
    """One watcher of one call.

    Attributes:
        call_index: the call watched (:attr:`LoadCall.index`).
        protocol: ``"client"`` or ``"v1"``.
        gateway: index of the server it connects to.
        subscribed_at: loop time from which it is owed every result (``None``: never).
        seen: marker number → loop time of the first transcript that carried it.
        finals: finals received.
        ended: the server ended the call's stream (close on ``/client``, ``end`` on ``/v1/ws``).
        error: why it stopped early, if it did.
    """

    call_index: int
    protocol: str
    gateway: int
    subscribed_at: float | None = None
    seen: dict[int, float] = field(default_factory=dict)
    finals: int = 0
    messages: int = 0
    ended: bool = False
    error: str | None = None

    def take(self, text: str, now: float) -> None:
        """Account one received message."""
        self.messages += 1
        if "mk" in text:
            for m in _MARK.findall(text):
                self.seen.setdefault(int(m), now)
        if _FINAL.search(text):
            self.finals += 1


async def watch(
    watcher: Watcher, host: str, port: int, call_sid: str, *, until: float, open_timeout_s: float
) -> None:
    """Run ``watcher`` on ``ws://host:port`` for ``call_sid`` until the call ends or loop time ``until``."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(max(until - loop.time(), 0.1)):
            if watcher.protocol == "client":
                await _client(watcher, host, port, call_sid, open_timeout_s)
            else:
                await _v1(watcher, host, port, call_sid, open_timeout_s)
    except TimeoutError:
        watcher.error = watcher.error or "timeout"
    except (OSError, asyncio.IncompleteReadError, HandshakeError) as exc:
        watcher.error = f"{type(exc).__name__}: {exc}"[:200]


async def _client(w: Watcher, host: str, port: int, sid: str, open_timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    wait_s = RETRY_S
    while True:
        ws = await RawWebSocket.open(host, port, "/client", timeout_s=open_timeout_s)
        listing = await ws.recv()
        if listing is not None and sid in json.loads(listing):
            break
        await ws.close(timeout_s=2.0)
        await asyncio.sleep(wait_s)
        wait_s = min(wait_s * 2, 0.5)
    ws.send_text(sid)
    w.subscribed_at = loop.time()
    try:
        while (text := await ws.recv()) is not None:
            w.take(text, loop.time())
        w.ended = True
    finally:
        await ws.close(timeout_s=2.0)


async def _v1(w: Watcher, host: str, port: int, sid: str, open_timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    ws = await RawWebSocket.open(host, port, "/v1/ws", timeout_s=open_timeout_s)
    subscribe = json.dumps({"type": "subscribe", "call_sid": sid, "since": None})
    wait_s = RETRY_S
    try:
        ws.send_text(subscribe)
        while (text := await ws.recv()) is not None:
            now = loop.time()
            if w.subscribed_at is None:
                kind = json.loads(text).get("type")
                if kind == "subscribed":
                    w.subscribed_at = now
                elif kind == "error" and '"unknown_call"' in text:
                    await asyncio.sleep(wait_s)
                    wait_s = min(wait_s * 2, 0.5)
                    ws.send_text(subscribe)
                continue
            if text.startswith('{"type":"end"') or '"type": "end"' in text[:20]:
                w.ended = True
                return
            w.take(text, now)
    finally:
        await ws.close(timeout_s=2.0)
