"""What the hub fans out, and to whom: parsed live messages and the two kinds of subscriber.

A :class:`LiveMessage` is one event from ``cs:{p}:<sid>:live``, parsed once however many clients
get it: ``text`` is the JSON string from Redis, forwarded as-is to ``/v1/ws`` clients, and
:meth:`LiveMessage.deepgram` converts it once to the ``Results`` shape for ``/client`` clients.

A subscriber is either *syncing* (``pending`` is a list: live messages are buffered while its
history is replayed) or *live* (``pending`` is None: messages go straight to its outbox). The
no-gap, no-duplicate rule lives in :meth:`CallSubscriber.deliver`: a final whose ID is not after
the subscriber's cursor (the last final it got) is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from websockets.frames import CloseCode

from services.gateway.outbox import SLOW_REASON, Outbox
from services.gateway.results_shape import results_json
from services.gateway.store import StreamId
from shared.redisconn import stream_id_tuple
from shared.schema import (
    CallMeta,
    EndEvent,
    TranscriptEvent,
    call_event_adapter,
    live_event_adapter,
)

log = logging.getLogger(__name__)

PENDING_FACTOR = 8
"""A syncing subscriber buffers at most ``PENDING_FACTOR * client_queue_max`` live messages."""


class LiveMessage:
    """One event of a call (``transcript``, ``end`` or ``error``), parsed once.

    ``final_id`` is the history stream ID of a final as a tuple, None for anything else.
    ``channels`` is the call's channel count, for the ``Results`` shape.
    """

    __slots__ = ("_deepgram", "channels", "final_id", "kind", "text")

    def __init__(self, kind: str, text: str, final_id: StreamId | None, channels: int) -> None:
        self.kind = kind
        self.text = text
        self.final_id = final_id
        self.channels = channels
        self._deepgram: str | None = None

    @classmethod
    def from_live(cls, data: bytes | str, channels: int) -> LiveMessage:
        """Parse one pub/sub payload.

        Raises:
            ValueError: not UTF-8, not a :data:`shared.schema.LiveEvent` (pydantic's
                ValidationError is a ValueError), or a final without an ``id``.
        """
        text = data.decode() if isinstance(data, bytes) else data
        event = live_event_adapter.validate_json(text)  # the transcriber's own models
        final_id = None
        if isinstance(event, TranscriptEvent) and event.is_final:
            if not event.id:
                raise ValueError("final without an id")
            final_id = stream_id_tuple(event.id)
        return cls(event.type, text, final_id, channels)

    @classmethod
    def from_history(cls, entry_id: bytes, fields: dict[Any, Any], channels: int) -> LiveMessage:
        """One entry of ``cs:{p}:<sid>:transcript`` as the final it was.

        Raises:
            ValueError: the entry is not a transcript event (pydantic's ValidationError is one).
        """
        event = TranscriptEvent.from_history(entry_id, fields)
        return cls("transcript", event.to_json(), stream_id_tuple(entry_id), channels)

    @classmethod
    def end(cls, call_sid: str) -> LiveMessage:
        """A synthetic ``end`` for a call that had already ended when a client subscribed."""
        return cls("end", EndEvent(call_sid=call_sid).to_json(), None, 0)

    def deepgram(self) -> str | None:
        """The ``Results`` JSON of a transcript (computed once), None for other kinds."""
        if self.kind != "transcript":
            return None
        if self._deepgram is None:
            try:
                self._deepgram = results_json(self.text, self.channels)
            except ValidationError:
                self._deepgram = ""
        return self._deepgram or None


class Subscriber:
    """Base of a hub subscriber: one outbox, a syncing/live state, and its resync task."""

    def __init__(self, outbox: Outbox, pending_max: int) -> None:
        self.outbox = outbox
        self.pending: list[Any] | None = []
        self.pending_max = pending_max
        self.closed = False
        self.lock = asyncio.Lock()
        self.resync_task: asyncio.Task[None] | None = None

    def on_message(self, msg: Any) -> None:
        """Called by the hub for each message on the subscriber's channel (never awaits)."""
        if self.closed:
            return
        pending = self.pending
        if pending is None:
            self.deliver(msg)
        elif len(pending) < self.pending_max:
            pending.append(msg)
        else:
            self.outbox.close(CloseCode.TRY_AGAIN_LATER, SLOW_REASON, drain=False)

    def enter_pending(self) -> None:
        """Stop delivering live (Redis was lost): buffer until the next sync."""
        if self.pending is None:
            self.pending = []

    def deliver(self, msg: Any) -> None:
        """Send ``msg`` to the client now."""
        raise NotImplementedError


class CallSubscriber(Subscriber):
    """One client's subscription to one call.

    ``cursor`` is the ID of the last final delivered (None until the first sync decides where
    live-only starts). ``deepgram`` selects the ``/client`` shape (and closing with 1000 on
    ``end``) over ``/v1/ws`` JSON. ``on_end`` is called (soon, not inside the fan-out) once the
    call's ``end`` has been delivered.
    """

    def __init__(
        self,
        call_sid: str,
        outbox: Outbox,
        *,
        since: StreamId | None,
        deepgram: bool,
        pending_max: int,
        on_end: Callable[[CallSubscriber], None] | None = None,
    ) -> None:
        super().__init__(outbox, pending_max)
        self.call_sid = call_sid
        self.cursor = since
        self.deepgram = deepgram
        self.ended = False
        self.on_end = on_end

    def deliver(self, msg: LiveMessage) -> None:
        """Forward one message, skipping finals at or before the cursor (no duplicates)."""
        if self.ended or self.closed:
            return
        kind = msg.kind
        if kind == "transcript":
            final_id = msg.final_id
            if final_id is not None:
                if self.cursor is not None and final_id <= self.cursor:
                    return
                self.cursor = final_id
            text = msg.deepgram() if self.deepgram else msg.text
            if text is not None:
                self.outbox.put(text, droppable=final_id is None)
        elif kind == "end":
            self.ended = True
            if self.deepgram:
                self.outbox.close(CloseCode.NORMAL_CLOSURE, "call ended", drain=True)
            else:
                self.outbox.put(msg.text)
            if self.on_end is not None:
                asyncio.get_running_loop().call_soon(self.on_end, self)
        elif not self.deepgram:  # error, audio_stopped, audio_resumed: /v1/ws only
            self.outbox.put(msg.text)

    def drain_pending(self) -> None:
        """Go live: deliver what was buffered while syncing.

        Messages published before the newest final already replayed from history are dropped
        (they are finals already sent, or interims those finals replaced).
        """
        pending, self.pending = self.pending or [], None
        start = 0
        cursor = self.cursor
        if cursor is not None:
            for i, msg in enumerate(pending):
                if msg.final_id is not None and msg.final_id <= cursor:
                    start = i + 1
        for msg in pending[start:]:
            self.deliver(msg)


class CallsWatcher(Subscriber):
    """A ``/v1/ws`` client that sent ``list``: gets ``call_started``/``call_ended`` pushed.

    ``keep``, when set, says which calls the client may see (its token's scope): events of
    other calls are not forwarded, and :meth:`visible` cuts the ``calls`` snapshot.
    """

    def __init__(
        self, outbox: Outbox, pending_max: int, keep: Callable[[CallMeta], bool] | None = None
    ) -> None:
        super().__init__(outbox, pending_max)
        self.keep = keep

    def visible(self, calls: list[CallMeta]) -> list[CallMeta]:
        """The calls of a snapshot this client may see."""
        keep = self.keep
        return calls if keep is None else [c for c in calls if keep(c)]

    def deliver(self, msg: str) -> None:
        """Forward one call event's JSON as-is (if its call is in scope)."""
        if self.closed:
            return
        keep = self.keep
        if keep is not None:
            try:
                event = call_event_adapter.validate_json(msg)
            except ValidationError:
                return
            if not keep(event.call):
                return
        self.outbox.put(msg)

    def drain_pending(self) -> None:
        """Go live: forward the call events buffered while the snapshot was read."""
        pending, self.pending = self.pending or [], None
        for msg in pending:
            self.deliver(msg)
