"""Deepgram live engine: one WebSocket per call, reconnecting without losing or repeating finals.

Protocol: https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming.
Per connection three tasks: *sender* (replayed audio, then new frames; ``CloseStream`` at the
end, never an empty binary frame: https://developers.deepgram.com/docs/close-stream),
*receiver* (Results → events), *keepalive* (``{"type": "KeepAlive"}`` when no audio went out
for ``keepalive_s``: Deepgram closes an idle socket after 10 s with 1011 NET-0001,
https://developers.deepgram.com/docs/audio-keep-alive).

Failures (https://developers.deepgram.com/docs/recovering-from-connection-errors): 401/403/400
at the handshake are final (:class:`AsrError` ``retryable=False``; see
:mod:`services.transcriber.dgconnect`); 429, 5xx, network drops and 1011 reconnect with
exponential backoff and jitter, up to ``max_retries`` (the budget resets when a final arrives),
replaying the audio sent since the channels' last finals. What the receiver gets goes through
:class:`~services.transcriber.dgresults.CallResults`: times shifted into call time, results of
audio already finalised dropped, the replay buffer trimmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from services.transcriber.dgconnect import open_listen
from services.transcriber.dgproto import build_url
from services.transcriber.dgresults import CallResults
from services.transcriber.engine import CallAudio, OnResult
from shared.aio import cancel_and_wait
from shared.errors import AsrError
from shared.retry import Backoff
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 5.0
"""Longest wait between two reconnects of one session, s."""

_KEEPALIVE = '{"type":"KeepAlive"}'
_CLOSE_STREAM = '{"type":"CloseStream"}'
_FINISH = None  # queue sentinel: no more audio


class _Dropped(Exception):
    """The connection ended before the session was done (retryable)."""


class DeepgramEngine:
    """Opens a :class:`DeepgramSession` per call. ``backoff_s``: first reconnect delay (doubles, ≤ 5 s).

    ``replay_max_frames``: the most frames kept for replay after a drop (older ones are lost).
    """

    name = "deepgram"

    def __init__(
        self,
        settings: TranscriberSettings,
        *,
        backoff_s: float = 0.25,
        queue_frames: int = 20,
        replay_max_frames: int = 600,
    ) -> None:
        self.settings = settings
        self.backoff_s = backoff_s
        self.queue_frames = queue_frames
        self.replay_max_frames = replay_max_frames
        self.reconnects = 0  # reconnections of all its sessions (a metric)

    async def open(self, call: CallAudio, on_result: OnResult) -> DeepgramSession:
        """Connect for ``call`` (retrying as documented) and start streaming.

        Raises:
            AsrError: the handshake failed for good (401/403/400) or retries ran out.
        """
        session = DeepgramSession(self, call, on_result)
        await session.start()
        return session

    async def aclose(self) -> None:
        """Nothing shared to release."""


class DeepgramSession:
    """One call's Deepgram stream. Use :meth:`send` per frame, then :meth:`finish` or :meth:`aclose`."""

    def __init__(self, engine: DeepgramEngine, call: CallAudio, on_result: OnResult) -> None:
        s = engine.settings
        self._engine = engine
        self._call = call
        self._on_result = on_result
        self._url = build_url(
            s.deepgram_url,
            channels=call.channels,
            model=s.deepgram_model,
            language=s.deepgram_language,
            extra_params=s.deepgram_params,
        )
        self._api_key = s.deepgram_api_key.get_secret_value() if s.deepgram_api_key else ""
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(engine.queue_frames)
        self._results = CallResults(call, replay_max_frames=engine.replay_max_frames)
        self._finishing = False
        self._closing = False  # CloseStream sent on this connection: a close is expected
        self._last_sent = time.monotonic()
        self._retry = Backoff(engine.backoff_s, RECONNECT_MAX_S)  # failures = retries so far
        self._connections = 0
        self._error: AsrError | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        """How many connections were opened (1 + reconnects)."""
        return self._connections

    async def start(self) -> None:
        """Start the session task and wait for the first connection.

        Raises:
            AsrError: the first connection failed for good.
        """
        self._task = asyncio.create_task(self._run(), name=f"deepgram-{self._call.call_sid}")
        connected = asyncio.create_task(self._connected.wait())
        try:
            await asyncio.wait({self._task, connected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._task is not None and self._task.done() and not self._finishing:
            raise AsrError("deepgram session ended unexpectedly", retryable=False)

    async def send(self, t_ms: int, pcmu: bytes) -> None:
        """Queue one frame (bounded: waits while Deepgram is behind).

        Raises:
            AsrError: the session failed for good.
        """
        self._raise_if_failed()
        if not self._queue.full():
            self._queue.put_nowait((t_ms, pcmu))
            return
        assert self._task is not None
        put = asyncio.create_task(self._queue.put((t_ms, pcmu)))
        try:
            await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        self._raise_if_failed()

    async def finish(self, timeout_s: float) -> None:
        """Send ``CloseStream`` after the queued audio and wait for the last finals.

        Raises:
            AsrError: the session failed for good, or did not end within ``timeout_s``.
        """
        self._raise_if_failed()
        self._finishing = True
        assert self._task is not None
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.put(_FINISH)
                await asyncio.shield(self._task)
        except TimeoutError:
            await self.aclose()
            raise AsrError("deepgram did not finish in time", retryable=True) from None
        self._raise_if_failed()

    async def aclose(self) -> None:
        """Stop at once (no CloseStream); idempotent."""
        if self._task is not None and not self._task.done():
            await cancel_and_wait(self._task)

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        sid = self._call.call_sid
        try:
            while True:
                try:
                    if await self._connection():
                        return
                except _Dropped as exc:
                    failure: Exception = exc
                except AsrError as exc:
                    if not exc.retryable:
                        raise
                    failure = exc
                if self._retry.failures >= self._engine.settings.max_retries:
                    raise AsrError(
                        f"deepgram: gave up after {self._retry.failures} retries", retryable=False
                    )
                self._engine.reconnects += 1
                await self._retry.retry_after(
                    failure, log, "deepgram reconnect", call_sid=sid, reason=str(failure),
                    retry=self._retry.failures + 1,
                )  # fmt: skip
        except AsrError as exc:
            self._error = exc
            log.error("deepgram failed", extra={"call_sid": sid, "reason": str(exc)})
        except Exception as exc:  # the result handler failed: the session cannot go on
            self._error = AsrError(
                f"deepgram session failed: {exc.__class__.__name__}", retryable=False
            )
            log.exception("deepgram session failed", extra={"call_sid": sid})

    async def _connection(self) -> bool:
        """One connection's life; True when the session is done, :class:`_Dropped` otherwise."""
        ws = await open_listen(
            self._url, api_key=self._api_key, timeout_s=self._engine.settings.connect_timeout_s
        )
        self._connections += 1
        sid = self._call.call_sid
        self._closing = False
        replay_frames = self._results.connected()
        log.info(
            "deepgram connected",
            extra={
                "call_sid": sid,
                "connection": self._connections,
                "replay_frames": replay_frames,
            },
        )
        self._connected.set()
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    sender = tg.create_task(self._sender(ws))
                    keepalive = tg.create_task(self._keepalive(ws))
                    try:
                        await self._receiver(ws)
                    finally:
                        sender.cancel()
                        keepalive.cancel()
            except* _Dropped as group:
                raise group.exceptions[0] from None
        finally:
            await ws.close()
        log.info("deepgram closed", extra={"call_sid": sid, "connection": self._connections})
        return True

    async def _send_audio(self, ws: ClientConnection, t_ms: int, pcmu: bytes) -> None:
        self._results.sent(t_ms)
        await ws.send(pcmu)
        self._last_sent = time.monotonic()

    async def _sender(self, ws: ClientConnection) -> None:
        try:
            for t_ms, pcmu in self._results.replay():
                await self._send_audio(ws, t_ms, pcmu)
            while not self._finishing or not self._queue.empty():
                item = await self._queue.get()
                if item is _FINISH:
                    break
                self._results.keep(item)
                await self._send_audio(ws, *item)
            self._closing = True
            await ws.send(_CLOSE_STREAM)
        except ConnectionClosed:
            return  # the receiver sees the close and decides

    async def _keepalive(self, ws: ClientConnection) -> None:
        interval_s = self._engine.settings.keepalive_s
        with contextlib.suppress(ConnectionClosed):
            while not self._closing:
                wait_s = self._last_sent + interval_s - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(min(wait_s, interval_s))
                    continue
                await ws.send(_KEEPALIVE)
                self._last_sent = time.monotonic()

    async def _receiver(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                await self._handle(raw)
        except ConnectionClosed:
            pass
        code = ws.close_code
        if self._closing and code == CloseCode.NORMAL_CLOSURE:
            return
        reason = ws.close_reason or ""
        raise _Dropped(f"closed {code} {reason[:40]}".strip())

    async def _handle(self, raw: str | bytes) -> None:
        event = self._results.handle(raw)
        if event is not None:
            if event.is_final:
                self._retry.reset()  # the retry budget resets when a final arrives
            await self._on_result(event)
