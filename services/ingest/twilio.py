"""One Twilio Media Streams connection as a state machine. Pure: no I/O, no logging of audio.

Message shapes and order (``connected``, ``start``, ``media``…, ``stop``; ``dtmf`` and ``mark``
in between): https://www.twilio.com/docs/voice/media-streams/websocket-messages. The app feeds
every text frame to :meth:`TwilioStream.feed` and publishes what comes back:

* :class:`CallStart` once, on ``start`` (the call's metadata, before any of its audio);
* :class:`~shared.schema.AudioFrame` s, oldest first, as the :class:`~services.ingest.mixer.Mixer`
  completes them;
* :class:`CallEnd` once, after the last frame, on ``stop`` or when the app calls
  :meth:`TwilioStream.close` (socket dropped, server stopping).

Bad input raises :class:`~shared.errors.TwilioMessageError` and leaves the state unchanged, so
the connection carries on; only ``unsupported_media_format`` means the app should close (1003).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from websockets.frames import CloseCode

from shared.audio import SAMPLE_RATE
from shared.errors import TwilioMessageError
from shared.schema import (
    AudioFrame,
    CallMeta,
    CallStatus,
    TwilioMedia,
    TwilioMessage,
    TwilioStart,
    TwilioStop,
    parse_media,
    parse_twilio,
)

from .mixer import TRACK_ORDER, Mixer

MULAW = "audio/x-mulaw"
"""The only ``mediaFormat.encoding`` Twilio Media Streams send (8 kHz, 1 channel per track)."""

FATAL_CODES: dict[str, CloseCode] = {
    "unsupported_media_format": CloseCode.UNSUPPORTED_DATA,
    "silence_limit": CloseCode.POLICY_VIOLATION,
}
"""Error codes after which the connection is closed, with their close code (1003 unsupported
data; 1008 policy: a call whose timestamps jump past its silence budget is ended)."""

STREAM_TOKEN_PARAMETER = "StreamToken"
"""The ``<Parameter>`` carrying the one-time stream token /twiml issued
(:mod:`services.ingest.admission`); never kept in the call's ``custom_parameters``."""


@dataclass(frozen=True, slots=True)
class CallStart:
    """The stream started: admit it (``stream_token``), then write the call's metadata
    before any of its audio."""

    meta: CallMeta
    stream_token: str = ""


@dataclass(frozen=True, slots=True)
class CallEnd:
    """The stream ended after ``end_ms`` of audio; ``reason`` is ``stop`` or what closed it."""

    call_sid: str
    end_ms: int
    reason: str


Action = CallStart | AudioFrame | CallEnd
class Phase(StrEnum):
    """Where a Twilio stream is: before ``start``, streaming, or over."""

    OPEN = "open"
    STARTED = "started"
    ENDED = "ended"


class TwilioStream:
    """The state of one ``/twilio`` WebSocket: ``open`` → ``started`` → ``ended``.

    Args:
        frame_ms, reorder_ms, max_gap_ms, silence_budget_ms: passed to the call's
            :class:`Mixer` (ms).

    Attributes:
        phase: ``open`` until ``start``, ``started`` until ``stop``/close, then ``ended``.
        meta: the call's metadata once started, else ``None``.
        mixer: the call's mixer once started, else ``None`` (its counters describe the call).
        dtmf, marks: how many ``dtmf`` / ``mark`` messages arrived (ignored otherwise).
    """

    def __init__(
        self,
        *,
        frame_ms: int,
        reorder_ms: int,
        max_gap_ms: int,
        silence_budget_ms: int | None = None,
    ) -> None:
        self._frame_ms = frame_ms
        self._reorder_ms = reorder_ms
        self._max_gap_ms = max_gap_ms
        self._silence_budget_ms = silence_budget_ms
        self.phase: Phase = Phase.OPEN
        self.meta: CallMeta | None = None
        self.mixer: Mixer | None = None
        self.dtmf = 0
        self.marks = 0

    @property
    def call_sid(self) -> str | None:
        """The call's SID once ``start`` arrived."""
        return self.meta.call_sid if self.meta else None

    def feed(self, raw: str | bytes) -> Sequence[Action]:
        """Parse one text frame and handle it (see :meth:`handle`).

        Raises:
            TwilioMessageError: ``bad_json``, ``unknown_event``, ``bad_message`` from
                :func:`shared.schema.parse_twilio`, or any code of :meth:`handle`.
        """
        media = parse_media(raw)
        if media is not None:
            return self._media_fields(*media)
        return self.handle(parse_twilio(raw))

    def handle(self, msg: TwilioMessage) -> Sequence[Action]:
        """Apply one parsed message; return what to publish, in order.

        Raises:
            TwilioMessageError: ``unsupported_media_format`` (not mu-law 8 kHz mono: close the
                connection), ``second_start`` (ignored), ``media_before_start``,
                ``media_after_stop``, ``unknown_track``, ``bad_payload`` (not base64, or empty),
                ``bad_timestamp`` (see :meth:`Mixer.add`). The state is unchanged by an error.
        """
        if isinstance(msg, TwilioMedia):
            return self._media(msg)
        if isinstance(msg, TwilioStart):
            return self._start(msg)
        if isinstance(msg, TwilioStop):
            return self.close("stop")
        if msg.event == "dtmf":
            self.dtmf += 1
        elif msg.event == "mark":
            self.marks += 1
        return ()

    def close(self, reason: str) -> Sequence[Action]:
        """End the stream: the remaining frames, then :class:`CallEnd`. Idempotent.

        Returns ``[]`` when the stream never started or has already ended.
        """
        if self.phase is not Phase.STARTED or self.mixer is None or self.meta is None:
            if self.phase is Phase.OPEN:
                self.phase = Phase.ENDED
            return ()
        self.phase = Phase.ENDED
        actions: list[Action] = list(self.mixer.flush())
        actions.append(CallEnd(self.meta.call_sid, self.mixer.end_ms, reason))
        return actions

    def _start(self, msg: TwilioStart) -> Sequence[Action]:
        if self.phase is not Phase.OPEN:
            raise TwilioMessageError("second_start", "a stream has exactly one start; ignored")
        info = msg.start
        fmt = info.media_format
        if fmt.encoding != MULAW or fmt.sample_rate != SAMPLE_RATE or fmt.channels != 1:
            raise TwilioMessageError(
                "unsupported_media_format",
                f"need {MULAW} at {SAMPLE_RATE} Hz, 1 channel per track; got "
                f"{fmt.encoding[:40]!r} at {fmt.sample_rate} Hz, {fmt.channels} channel(s)",
            )
        if len(set(info.tracks)) != len(info.tracks):
            raise TwilioMessageError("bad_message", f"tracks repeat: {info.tracks}")
        tracks = [t for t in TRACK_ORDER if t in info.tracks]
        params = dict(info.custom_parameters)
        token = params.pop(STREAM_TOKEN_PARAMETER, "")
        meta = CallMeta(
            call_sid=info.call_sid,
            stream_sid=info.stream_sid,
            account_sid=info.account_sid,
            **{"from": params.pop("From", "")},
            to=params.pop("To", ""),
            tracks=tracks,
            channels=len(tracks),
            status=CallStatus.QUEUED,  # until a transcriber claims it (docs/protocol.md, "CallMeta")
            custom_parameters=params,
        )
        self.mixer = Mixer(
            len(tracks),
            self._frame_ms,
            self._reorder_ms,
            self._max_gap_ms,
            tracks=tracks,
            silence_budget_ms=self._silence_budget_ms,
        )
        self.meta = meta
        self.phase = Phase.STARTED
        return [CallStart(meta, token)]

    def refuse(self) -> None:
        """The call was not admitted: end the stream without a :class:`CallEnd` (nothing of it
        was published)."""
        self.phase = Phase.ENDED

    def _media(self, msg: TwilioMedia) -> Sequence[Action]:
        media = msg.media
        return self._media_fields(media.track, media.timestamp, media.payload)

    def _media_fields(self, track: str, timestamp_ms: int, payload_b64: str) -> Sequence[Action]:
        if self.phase is not Phase.STARTED or self.mixer is None:
            if self.phase is Phase.OPEN:
                raise TwilioMessageError("media_before_start", "media before start; dropped")
            raise TwilioMessageError("media_after_stop", "media after the stream ended; dropped")
        try:
            payload = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError):
            raise TwilioMessageError("bad_payload", "media.payload is not base64") from None
        if not payload:
            raise TwilioMessageError("bad_payload", "media.payload is empty")
        return self.mixer.add(track, timestamp_ms, payload)
