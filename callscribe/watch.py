"""``callscribe watch``: follow one call's transcript in the terminal over the gateway's ``/v1/ws``.

Protocol (docs/protocol.md, "WebSocket /v1/ws"; models in :mod:`shared.schema`): the client sends
``{"type": "list"}`` and gets ``{"type": "calls", "calls": [CallMeta…]}``, then
``call_started``/``call_ended`` pushes; it sends ``{"type": "subscribe", "call_sid", "since"}``
and gets ``{"type": "subscribed"}``, the call's ``transcript`` events and finally ``end``.

Which call: the ``call_sid`` given; else the only live call; else the next call to start, or
the one left once the others have ended (started while one call finishes and the next has
begun, it follows the next as soon as the first ends). A call
followed from its start is subscribed with ``since="0"`` so no final published between
``call_started`` and the subscription is missed. If the gateway drops the connection (restart,
close 1012) the watcher reconnects and resubscribes ``since`` the last final it showed, so the
transcript continues with no gap and no duplicate.

The options, and the gateway URL they name, are :mod:`callscribe.watch_options`'.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode

from callscribe.render import CallRenderer
from callscribe.watch_options import WatchOptions, v1_url
from shared.aio import cancel_and_wait
from shared.retry import Backoff
from shared.schema import (
    AudioResumed,
    AudioStopped,
    CallEnded,
    CallList,
    CallMeta,
    CallStarted,
    CallStatus,
    CallUpdated,
    EndEvent,
    ErrorEvent,
    ListRequest,
    ServerMessage,
    SubscribeRequest,
    TranscriptEvent,
    server_message_adapter,
)

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


def _clock(seconds: object) -> str:
    """Call seconds as ``mm:ss`` (``?`` when not a number)."""
    if not isinstance(seconds, int | float):
        return "?"
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


@dataclass
class _State:
    target: str | None
    since: str | None
    subscribed: bool = False
    last_final_id: str | None = None
    ended: bool = False
    started_rendering: bool = False
    grace_deadline: float | None = None
    failed: str | None = None  # why the exit status will be 1 (asr_failed, unknown call)
    live: dict[str, CallMeta] = field(default_factory=dict)


class Watcher:
    """Follows one call until its ``end`` and renders it; :meth:`run` returns the exit status.

    ``ready`` is set once the gateway has answered the call list (call events will reach us
    from then on). ``first_transcript`` is set when the first transcript event (interim or final) arrives, so
    the demo can time it. Exit status: 0 after the call's ``end`` (or ``call_ended`` and the
    grace period), 1 when the gateway cannot be reached or the connection is lost for good.
    """

    def __init__(self, options: WatchOptions, renderer: CallRenderer) -> None:
        self.options = options
        self.renderer = renderer
        self.first_transcript = asyncio.Event()
        self.ready = asyncio.Event()
        self._state = _State(target=options.call_sid, since=options.since)

    async def run(self) -> int:
        """Connect, follow, render; reconnect on a lost connection. Never raises but Cancelled."""
        try:
            return await self._run()
        except asyncio.CancelledError:
            self.renderer.interrupt()
            raise

    async def _run(self) -> int:
        url = v1_url(self.options.url)
        opts = self.options
        loop = asyncio.get_running_loop()
        backoff = Backoff(base_s=opts.reconnect_delay_s, cap_s=opts.reconnect_max_s)
        failing_since: float | None = None
        headers = {"Authorization": f"Bearer {opts.token}"} if opts.token else {}
        while True:
            try:
                async with connect(
                    url,
                    open_timeout=opts.open_timeout_s,
                    close_timeout=2.0,
                    additional_headers=headers,
                ) as ws:
                    failing_since = None
                    backoff.reset()
                    done = await self._session(ws)
                    if done:
                        return self._verdict()
                    reason = "the gateway closed the connection"
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                reason = f"cannot reach the gateway at {url} ({exc.__class__.__name__}: {exc})"
            except ConnectionClosed as exc:
                if (
                    exc.rcvd is not None and exc.rcvd.code == CloseCode.POLICY_VIOLATION
                ):  # retrying won't help
                    self.renderer.note(f"refused by the gateway: {exc.rcvd.reason}")
                    return EXIT_FAILED
                reason = f"connection lost ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
            if self._state.failed is not None and not self._state.subscribed:
                self.renderer.note(self._state.failed)
                return EXIT_FAILED
            now = loop.time()
            first = failing_since is None
            failing_since = now if failing_since is None else failing_since
            out_of_tries = opts.reconnects is not None and backoff.failures >= opts.reconnects
            if out_of_tries or now - failing_since >= opts.reconnect_for_s:
                self.renderer.note(f"giving up: {reason}")
                return EXIT_FAILED
            if first:  # one line per outage, not one per try
                self.renderer.note(
                    f"{reason}; reconnecting (for up to {opts.reconnect_for_s:.0f} s)"
                )
            log.info(
                "reconnect", extra={"call_sid": self._state.target, "attempt": backoff.failures + 1}
            )
            self._state.subscribed = False
            if self._state.last_final_id is not None:
                self._state.since = self._state.last_final_id
            await backoff.wait()

    def _verdict(self) -> int:
        """The exit status once the call is over: 1 (with a note) when its transcript is incomplete."""
        if self._state.failed is not None:
            self.renderer.note(self._state.failed)
            return EXIT_FAILED
        return EXIT_OK

    async def _session(self, ws: ClientConnection) -> bool:
        """One connection: list, subscribe, render. True once the call is over."""
        await ws.send(ListRequest(type="list").model_dump_json())
        if not self.renderer.tty:
            return await self._receive(ws)
        # the progress ticker lives exactly as long as this connection's receive loop
        ticker = asyncio.create_task(self._tick(), name="watch-tick")
        try:
            return await self._receive(ws)
        finally:
            await cancel_and_wait(ticker)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            self.renderer.tick()

    async def _receive(self, ws: ClientConnection) -> bool:
        st = self._state
        loop = asyncio.get_running_loop()
        first = True
        while True:
            if first:
                deadline: float | None = loop.time() + self.options.open_timeout_s
            else:
                deadline = st.grace_deadline
            try:
                async with asyncio.timeout_at(deadline):
                    raw = await ws.recv()
            except TimeoutError:
                if first:
                    raise
                self.renderer.end()  # call_ended came but end did not: done anyway
                return True
            first = False
            try:
                message = server_message_adapter.validate_json(raw)
            except ValidationError:
                log.warning("unreadable message from gateway", extra={"call_sid": st.target})
                continue
            if await self._handle(ws, message):
                return True

    async def _handle(self, ws: ClientConnection, message: ServerMessage) -> bool:
        """Apply one gateway message; True when the watch is over."""
        st = self._state
        if isinstance(message, TranscriptEvent):
            if message.call_sid == st.target:
                self.first_transcript.set()
                if self.renderer.transcript(message) and message.id:
                    st.last_final_id = message.id
        elif isinstance(message, EndEvent):
            if message.call_sid == st.target:
                self.renderer.end()
                return True
        elif isinstance(message, CallList):
            # queued calls too: their audio is kept and transcribed once a worker is free
            st.live = {c.call_sid: c for c in message.calls if c.status is not CallStatus.ENDED}
            await self._choose(ws)
            self.ready.set()
        elif isinstance(message, CallStarted):
            st.live[message.call.call_sid] = message.call
            if not st.subscribed and st.target in (None, message.call.call_sid):
                await self._subscribe(ws, message.call, since=st.since or "0")
        elif isinstance(message, CallUpdated):
            if message.call.call_sid in st.live:
                st.live[message.call.call_sid] = message.call
        elif isinstance(message, CallEnded):
            st.live.pop(message.call.call_sid, None)
            if message.call.call_sid == st.target and st.grace_deadline is None:
                st.grace_deadline = asyncio.get_running_loop().time() + self.options.end_grace_s
            elif st.target is None and not st.subscribed and len(st.live) == 1:
                await self._choose(ws)  # all but one ended: follow the one left
        elif isinstance(message, AudioStopped | AudioResumed) and message.call_sid == st.target:
            at = _clock(message.at_s)
            self.renderer.note(
                f"audio stopped at {at}: no sound for {message.idle_s} s (the call may have dropped)"
                if isinstance(message, AudioStopped)
                else f"audio resumed at {at}"
            )
        elif isinstance(message, ErrorEvent):
            return self._error(message)
        return False  # subscribed, unsubscribed, history pages: nothing to do

    def _error(self, message: ErrorEvent) -> bool:
        """Show a gateway ``error``; True when it ends the watch (an unknown call)."""
        st = self._state
        if message.code == "already_subscribed":
            return False
        self.renderer.note(f"gateway: {message.code}: {message.message}")
        ours = message.call_sid in (None, st.target)
        if message.code == "asr_failed" and ours:
            st.failed = "the transcript is incomplete: speech recognition failed (asr_failed)"
        if message.code == "unknown_call" and ours:
            st.subscribed = False
            if not self.options.wait_for_start:
                st.failed = f"no such call: {st.target} (not live, nor in the gateway's history)"
                return True
            self.renderer.note(f"waiting for call {st.target} to start")  # the demo's call
        return False

    async def _choose(self, ws: ClientConnection) -> None:
        st = self._state
        if st.subscribed:
            return
        if st.target is not None:
            meta = st.live.get(st.target)
            if meta is None and self.options.wait_for_start:
                return
            # from the call's start, like the web page: a watcher sees the conversation so far
            await self._subscribe(ws, meta or CallMeta(call_sid=st.target), since=st.since or "0")
            return
        if len(st.live) == 1:
            (meta,) = st.live.values()
            await self._subscribe(ws, meta, since=st.since or "0")
            return
        if not st.live:
            self.renderer.note("no live call; waiting for the next one to start")
            return
        self.renderer.note(f"{len(st.live)} live calls (pass one as CALL_SID to watch it):")
        for sid, meta in sorted(st.live.items(), key=lambda kv: kv[1].started_at):
            self.renderer.note(f"  {sid}  {meta.channels} channel(s)")
        self.renderer.note("waiting for the next call to start, or for all but one to end")

    async def _subscribe(self, ws: ClientConnection, meta: CallMeta, *, since: str | None) -> None:
        st = self._state
        st.target = meta.call_sid
        st.subscribed = True
        if not st.started_rendering:
            st.started_rendering = True
            self.renderer.start(meta)
        request = SubscribeRequest(type="subscribe", call_sid=meta.call_sid, since=since)
        await ws.send(request.model_dump_json(exclude_none=True))
        log.info("subscribed", extra={"call_sid": meta.call_sid, "since": since})



async def watch(options: WatchOptions, renderer: CallRenderer) -> int:
    """Follow a call until it ends; returns the exit status (see :class:`Watcher`)."""
    return await Watcher(options, renderer).run()
