"""``callscribe watch``: follow one call's transcript in the terminal over the gateway's ``/v1/ws``.

Protocol (docs/protocol.md, "WebSocket /v1/ws"; models in :mod:`shared.schema`): the client sends
``{"type": "list"}`` and gets ``{"type": "calls", "calls": [CallMeta…]}``, then
``call_started``/``call_ended`` pushes; it sends ``{"type": "subscribe", "call_sid", "since"}``
and gets ``{"type": "subscribed"}``, the call's ``transcript`` events and finally ``end``.

Which call: the ``call_sid`` given; else the only live call; else the next call to start. A call
followed from its start is subscribed with ``since="0"`` so no final published between
``call_started`` and the subscription is missed. If the gateway drops the connection (restart,
close 1012) the watcher reconnects and resubscribes ``since`` the last final it showed, so the
transcript continues with no gap and no duplicate.

Over 300 lines, not split yet: the watcher's connection, retry and rendering loop; the seam is the
reconnect policy (issue 7).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode

from callscribe.render import CallRenderer
from shared.aio import cancel_and_wait
from shared.retry import Backoff
from shared.schema import CallMeta, CallStatus, TranscriptEvent

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass
class WatchOptions:
    """How to watch.

    ``url``: the gateway's ``/v1/ws`` URL (``ws://host:8080/v1/ws``; a bare ``ws://host:8080``
    gets ``/v1/ws`` appended). ``since``: a history ID to replay from; None = the whole call
    (``"0"``), whether it was given by SID or followed from its start.
    ``open_timeout_s``: WebSocket handshake and first answer. ``end_grace_s``: after
    ``call_ended`` without ``end``, how long to wait for it before exiting anyway.
    ``wait_for_start``: with ``call_sid``, subscribe only once that call is live (listed or
    ``call_started``), from its start (the demo, which starts its watcher before its call).
    ``reconnect_for_s``: after a lost connection (a gateway restarting, a rolling restart of
    several), how long to keep trying, with backoff from ``reconnect_delay_s`` up to
    ``reconnect_max_s`` and jitter, before giving up; ``reconnects``: at most this many tries
    in a row (None = as many as fit in ``reconnect_for_s``).
    ``tick_s``: progress refresh period on a TTY. ``token``: the bearer token sent as
    ``Authorization: Bearer`` (``callscribe token`` mints one); None when the gateway runs
    with ``GATEWAY_AUTH=none``.

    Exit status of a watch: 0 once the call ended with its transcript complete; 1 when the
    gateway could not be reached for ``reconnect_for_s``, the call is unknown (not live, not in
    the gateway's history; unless ``wait_for_start``), recognition failed (``asr_failed``:
    the transcript is incomplete), or the gateway refused the token (1008).
    """

    url: str
    call_sid: str | None = None
    since: str | None = None
    open_timeout_s: float = 10.0
    end_grace_s: float = 3.0
    wait_for_start: bool = False
    reconnects: int | None = None
    reconnect_for_s: float = 120.0
    reconnect_delay_s: float = 0.5
    reconnect_max_s: float = 5.0
    tick_s: float = 1.0
    token: str | None = None


def _clock(seconds: object) -> str:
    """Call seconds as ``mm:ss`` (``?`` when not a number)."""
    if not isinstance(seconds, int | float):
        return "?"
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def v1_url(url: str) -> str:
    """``ws://h:8080`` or ``ws://h:8080/`` → ``ws://h:8080/v1/ws``; a URL with a path is kept.

    ``http://``/``https://`` (the address of the web page) become ``ws://``/``wss://``.

    Raises:
        ValueError: not a ws, wss, http or https URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    if not sep or scheme not in ("ws", "wss") or not rest:
        raise ValueError(f"not a ws:// URL: {url!r}")
    host, _, path = rest.partition("/")
    if not path:
        return f"{scheme}://{host}/v1/ws"
    return f"{scheme}://{rest}"


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
        await ws.send('{"type":"list"}')
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
                message = json.loads(raw)
                kind = message.get("type") if isinstance(message, dict) else None
            except ValueError:
                kind = None
            if kind is None:
                log.warning("unreadable message from gateway", extra={"call_sid": st.target})
                continue
            if await self._handle(ws, kind, message):
                return True

    async def _handle(self, ws: ClientConnection, kind: str, message: dict[str, Any]) -> bool:
        st = self._state
        if kind == "transcript":
            try:
                event = TranscriptEvent.model_validate(message)
            except ValidationError:
                log.warning("bad transcript event", extra={"call_sid": st.target})
                return False
            if event.call_sid == st.target:
                self.first_transcript.set()
                if self.renderer.transcript(event) and event.id:
                    st.last_final_id = event.id
            return False
        if kind == "end":
            if message.get("call_sid") == st.target:
                self.renderer.end()
                return True
            return False
        if kind == "calls":
            calls = [self._meta(c) for c in message.get("calls") or []]
            # queued calls too: their audio is kept and transcribed once a worker is free
            st.live = {c.call_sid: c for c in calls if c is not None and c.status is not CallStatus.ENDED}
            await self._choose(ws)
            self.ready.set()
            return False
        if kind in ("call_started", "call_updated", "call_ended"):
            meta = self._meta(message.get("call"))
            if meta is None:
                return False
            if kind == "call_updated":
                if meta.call_sid in st.live:
                    st.live[meta.call_sid] = meta
            elif kind == "call_started":
                st.live[meta.call_sid] = meta
                if not st.subscribed and st.target in (None, meta.call_sid):
                    await self._subscribe(ws, meta, since=st.since or "0")
            else:
                st.live.pop(meta.call_sid, None)
                if meta.call_sid == st.target and st.grace_deadline is None:
                    st.grace_deadline = asyncio.get_running_loop().time() + self.options.end_grace_s
            return False
        if kind == "subscribed":
            return False
        if kind in ("audio_stopped", "audio_resumed") and message.get("call_sid") == st.target:
            at = _clock(message.get("at_s"))
            self.renderer.note(
                f"audio stopped at {at}: no sound for {message.get('idle_s')} s (the call may have dropped)"
                if kind == "audio_stopped"
                else f"audio resumed at {at}"
            )
            return False
        if kind == "error":
            code, text = message.get("code", "error"), message.get("message", "")
            if code == "already_subscribed":
                return False
            self.renderer.note(f"gateway: {code}: {text}")
            if code == "asr_failed" and message.get("call_sid") in (None, st.target):
                st.failed = "the transcript is incomplete: speech recognition failed (asr_failed)"
            if code == "unknown_call" and message.get("call_sid") in (None, st.target):
                st.subscribed = False
                if not self.options.wait_for_start:
                    st.failed = (
                        f"no such call: {st.target} (not live, nor in the gateway's history)"
                    )
                    return True
                self.renderer.note(f"waiting for call {st.target} to start")  # the demo's call
            return False
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
        self.renderer.note("waiting for the next call to start")

    async def _subscribe(self, ws: ClientConnection, meta: CallMeta, *, since: str | None) -> None:
        st = self._state
        st.target = meta.call_sid
        st.subscribed = True
        if not st.started_rendering:
            st.started_rendering = True
            self.renderer.start(meta)
        request: dict[str, str] = {"type": "subscribe", "call_sid": meta.call_sid}
        if since is not None:
            request["since"] = since
        await ws.send(json.dumps(request))
        log.info("subscribed", extra={"call_sid": meta.call_sid, "since": since})

    @staticmethod
    def _meta(raw: object) -> CallMeta | None:
        try:
            return CallMeta.model_validate(raw)
        except ValidationError:
            return None


async def watch(options: WatchOptions, renderer: CallRenderer) -> int:
    """Follow a call until it ends; returns the exit status (see :class:`Watcher`)."""
    return await Watcher(options, renderer).run()
