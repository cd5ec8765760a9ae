"""Every wire message callscribe reads or writes, one pydantic model each.

Three families:

* Twilio Media Streams messages (what ingest reads on ``/twilio``), dispatched on ``event``.
  Source: https://www.twilio.com/docs/voice/media-streams/websocket-messages. Numeric fields
  (``sequenceNumber``, ``chunk``, ``timestamp``) arrive as strings; the models turn them into ints.
* Our events (what the transcriber publishes and the gateway forwards), dispatched on ``type``:
  ``transcript``, ``call_started``, ``call_updated``, ``call_ended``, ``end``, ``error``,
  ``audio_stopped``, ``audio_resumed`` (docs/protocol.md, "Events").
* The ``/v1/ws`` client protocol (what a gateway client sends), dispatched on ``type``
  (docs/protocol.md, "WebSocket /v1/ws").

The Redis field encoding of each model that lives in Redis sits next to the model, once.

Over 300 lines on purpose: the wire contract in one place (every message and Redis record, one
model each, used on both sides), which tests/test_protocol_doc.py checks against
docs/protocol.md.
"""

from __future__ import annotations

import json
import re
import time
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictBool,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict

from shared.errors import ClientMessageError, TwilioMessageError

# --------------------------------------------------------------------------- Twilio Media Streams


CALL_SID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""What a callSid may look like before it is used in a Redis key or looked up: Twilio's are
``CA`` + 32 hex digits (https://www.twilio.com/docs/glossary/what-is-a-sid); ours (tests,
simulator) use the same characters."""

CALL_SID_RE = re.compile(CALL_SID_PATTERN)
""":data:`CALL_SID_PATTERN` compiled: ``CALL_SID_RE.match(text)``."""


class _TwilioModel(BaseModel):
    # Twilio may add fields; we ignore what we do not use rather than refuse the call.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


MAX_SID_CHARS = 64
"""Twilio SIDs are 34 characters (two letters, 32 hex digits); longer is refused."""

MAX_CUSTOM_PARAMETERS = 16
"""``customParameters`` entries accepted in a ``start`` (our TwiML sends four)."""

MAX_PARAMETER_NAME_CHARS = 64
MAX_PARAMETER_VALUE_CHARS = 256
"""Longest name / value of one custom parameter (Twilio documents none; phone numbers are 16)."""

MAX_PAYLOAD_CHARS = 10_668
"""Longest ``media.payload``: base64 of 8000 bytes, one second of audio (Twilio sends 160 bytes,
216 characters, per packet); more would let one message write minutes of audio."""


def _check_parameters(params: dict[str, str]) -> dict[str, str]:
    if len(params) > MAX_CUSTOM_PARAMETERS:
        raise ValueError(f"at most {MAX_CUSTOM_PARAMETERS} custom parameters")
    for name, value in params.items():
        if len(name) > MAX_PARAMETER_NAME_CHARS or len(value) > MAX_PARAMETER_VALUE_CHARS:
            raise ValueError("custom parameter name or value too long")
    return params


CustomParameters = Annotated[dict[str, str], AfterValidator(_check_parameters)]
"""``start.customParameters``, within :data:`MAX_CUSTOM_PARAMETERS` and the lengths above."""


class MediaFormat(_TwilioModel):
    """``start.mediaFormat``: always ``audio/x-mulaw`` at 8000 Hz, 1 channel per track."""

    encoding: str = Field(max_length=64)
    sample_rate: int = Field(alias="sampleRate", ge=0, le=1_000_000)
    channels: int = Field(default=1, ge=0, le=64)


class StartInfo(_TwilioModel):
    """``start``: the stream's metadata, sent once after ``connected``."""

    account_sid: str = Field(alias="accountSid", min_length=1, max_length=MAX_SID_CHARS)
    stream_sid: str = Field(alias="streamSid", min_length=1, max_length=MAX_SID_CHARS)
    call_sid: str = Field(alias="callSid", pattern=CALL_SID_PATTERN)
    tracks: list[Literal["inbound", "outbound"]] = Field(min_length=1, max_length=2)
    custom_parameters: CustomParameters = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(alias="mediaFormat")


class MediaInfo(_TwilioModel):
    """``media``: one packet of one track; ``timestamp`` is ms from the stream start."""

    track: Literal["inbound", "outbound"]
    chunk: int = Field(ge=0)
    timestamp: int = Field(ge=0, le=2**40)
    payload: str = Field(max_length=MAX_PAYLOAD_CHARS)


class DtmfInfo(_TwilioModel):
    """``dtmf``: a key the caller pressed (``track`` is ``inbound_track``)."""

    track: str = Field(default="inbound_track", max_length=32)
    digit: str = Field(max_length=8)


class MarkInfo(_TwilioModel):
    """``mark``: the name of a mark (bidirectional streams only)."""

    name: str = Field(max_length=256)


class StopInfo(_TwilioModel):
    """``stop``: the stream has ended."""

    account_sid: str | None = Field(default=None, alias="accountSid", max_length=MAX_SID_CHARS)
    call_sid: str | None = Field(default=None, alias="callSid", max_length=MAX_SID_CHARS)


class TwilioConnected(_TwilioModel):
    """``{"event": "connected", "protocol": "Call", "version": "1.0.0"}``."""

    event: Literal["connected"]
    protocol: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64)


class TwilioStart(_TwilioModel):
    """``{"event": "start", "sequenceNumber": "1", "start": {...}, "streamSid": "MZ…"}``."""

    event: Literal["start"]
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str | None = Field(default=None, alias="streamSid", max_length=MAX_SID_CHARS)
    start: StartInfo


class TwilioMedia(_TwilioModel):
    """``{"event": "media", "sequenceNumber": "3", "media": {...}, "streamSid": "MZ…"}``."""

    event: Literal["media"]
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str | None = Field(default=None, alias="streamSid", max_length=MAX_SID_CHARS)
    media: MediaInfo


class TwilioDtmf(_TwilioModel):
    """``{"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "1"}, …}``."""

    event: Literal["dtmf"]
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str | None = Field(default=None, alias="streamSid", max_length=MAX_SID_CHARS)
    dtmf: DtmfInfo


class TwilioMark(_TwilioModel):
    """``{"event": "mark", "mark": {"name": "…"}, …}``."""

    event: Literal["mark"]
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str | None = Field(default=None, alias="streamSid", max_length=MAX_SID_CHARS)
    mark: MarkInfo


class TwilioStop(_TwilioModel):
    """``{"event": "stop", "stop": {"accountSid": "AC…", "callSid": "CA…"}, …}``."""

    event: Literal["stop"]
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str | None = Field(default=None, alias="streamSid", max_length=MAX_SID_CHARS)
    stop: StopInfo = Field(default_factory=StopInfo)


TwilioMessage = Annotated[
    TwilioConnected | TwilioStart | TwilioMedia | TwilioDtmf | TwilioMark | TwilioStop,
    Field(discriminator="event"),
]
_twilio_adapter: TypeAdapter[TwilioMessage] = TypeAdapter(TwilioMessage)
TWILIO_EVENTS = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})


def parse_twilio(raw: str | bytes) -> TwilioMessage:
    """Parse one text frame from Twilio into its model.

    The JSON is parsed and validated in one pass by pydantic-core (about 2 µs for a ``media``
    message, a third of ``json.loads`` followed by validation); only a message that fails is
    parsed again to say why.

    Raises:
        TwilioMessageError: ``bad_json`` (not a JSON object), ``unknown_event`` (an ``event``
            outside connected/start/media/dtmf/mark/stop) or ``bad_message`` (a known event
            with missing or ill-typed fields). Never ``KeyError``/``ValueError``.
    """
    try:
        return _twilio_adapter.validate_json(raw)
    except ValidationError:
        pass
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TwilioMessageError("bad_json", f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise TwilioMessageError("bad_json", "a Twilio message must be a JSON object")
    event = data.get("event")
    if not isinstance(event, str) or event not in TWILIO_EVENTS:
        raise TwilioMessageError("unknown_event", f"unknown event {str(event)[:40]!r}")
    try:
        _twilio_adapter.validate_python(data)
    except ValidationError as exc:
        where = ", ".join(".".join(str(p) for p in e["loc"][1:]) or "?" for e in exc.errors()[:3])
        raise TwilioMessageError("bad_message", f"malformed {event} message ({where})") from None
    raise TwilioMessageError("bad_message", f"malformed {event} message")  # pragma: no cover


class _MediaFields(TypedDict):  # the checks of MediaInfo, field for field
    track: Literal["inbound", "outbound"]
    chunk: Annotated[int, Field(ge=0)]
    timestamp: Annotated[int, Field(ge=0, le=2**40)]
    payload: Annotated[str, Field(max_length=MAX_PAYLOAD_CHARS)]


class _MediaMessage(TypedDict):
    event: Literal["media"]
    sequenceNumber: NotRequired[int | None]
    streamSid: NotRequired[Annotated[str, Field(max_length=MAX_SID_CHARS)] | None]
    media: _MediaFields


_media_adapter: TypeAdapter[_MediaMessage] = TypeAdapter(_MediaMessage)


def parse_media(raw: str | bytes) -> tuple[str, int, str] | None:
    """``(track, timestamp_ms, payload_base64)`` of a well-formed ``media`` message, else None.

    The hot path of ingest (100 messages per call-second): the same checks as
    :class:`TwilioMedia` into plain dicts, about half the cost of building the two models.
    None means "not a valid media message": :func:`parse_twilio` then parses it and says why.
    """
    try:
        media = _media_adapter.validate_json(raw)["media"]
    except ValidationError:
        return None
    return media["track"], media["timestamp"], media["payload"]


# --------------------------------------------------------------------------- our events

Speaker = Literal["caller", "callee"]
SPEAKERS: tuple[Speaker, Speaker] = ("caller", "callee")
"""Channel 0 is the inbound track (the caller), channel 1 the outbound track (the callee)."""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> str:
        """Serialise once; the result is what goes on the wire and into Redis."""
        return self.model_dump_json(by_alias=True)


class Word(BaseModel):
    """One recognised word; ``start``/``end`` in seconds from the start of the call."""

    model_config = ConfigDict(extra="ignore")

    word: str
    start: float
    end: float
    confidence: float = 1.0


class TranscriptEvent(_Event):
    """An interim or final transcript of one stretch of speech on one channel.

    ``id`` is the entry ID in ``cs:{p}:<sid>:transcript`` for a final, ``None`` for an interim.
    ``segment`` is stable for one stretch of speech on one channel within the call, so a client
    replaces interim text in place and the final replaces the last interim. ``start``/``end`` are
    seconds from the start of the call. ``speech_final`` marks the end of an utterance.
    """

    type: Literal["transcript"] = "transcript"
    call_sid: str
    id: str | None = None
    segment: int
    channel: int = Field(ge=0, le=1)
    speaker: Speaker
    is_final: bool
    speech_final: bool = False
    start: float
    end: float
    text: str
    confidence: float = 0.0
    words: list[Word] = Field(default_factory=list)

    def to_history(self) -> dict[str, str]:
        """The Redis fields of this final in ``cs:{p}:<sid>:transcript``: ``{"e": json without id}``."""
        return {"e": self.model_dump_json(exclude={"id"})}

    @classmethod
    def from_history(cls, entry_id: str | bytes, fields: dict[Any, Any]) -> TranscriptEvent:
        """Rebuild a final from one history entry (the inverse of :meth:`to_history`).

        Raises:
            ValueError: no ``e`` field, or not a transcript event (pydantic's ValidationError).
        """
        raw = fields.get(b"e", fields.get("e"))
        if raw is None:
            raise ValueError("history entry without field e")
        event = cls.model_validate_json(raw)
        event.id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return event


class CallStatus(StrEnum):
    """Where a call is in its life: waiting for a transcriber, being transcribed, over.

    Members equal their strings (``CallStatus.LIVE == "live"``), which is what goes to Redis
    and on the wire.
    """

    QUEUED = "queued"
    LIVE = "live"
    ENDED = "ended"


_STATUSES: frozenset[str] = frozenset(CallStatus)


class CallMeta(BaseModel):
    """A call's metadata, as kept in ``cs:{p}:<sid>:meta`` and sent in call events.

    ``started_at``/``ended_at`` are Unix times in seconds. ``tracks`` lists the Twilio tracks
    (``inbound``, ``outbound``); ``channels`` is ``len(tracks)``: 2 = stereo, 1 = mono.
    ``status``: ``queued`` while the call waits for a transcriber (its audio is kept), ``live``
    once one serves it, ``ended`` when it is over. ``failure``: why an ended call's transcript
    is incomplete (``asr_failed``: recognition failed; ``audio_stopped``: the audio stopped
    without the call's end), None when it is not.
    """

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    call_sid: str
    stream_sid: str = ""
    account_sid: str = ""
    from_: str = Field(default="", alias="from")
    to: str = ""
    tracks: list[str] = Field(default_factory=lambda: ["inbound", "outbound"])
    channels: int = 2
    started_at: float = Field(default_factory=time.time)
    ended_at: float | None = None
    status: CallStatus = CallStatus.LIVE
    custom_parameters: dict[str, str] = Field(default_factory=dict)
    failure: str | None = None

    def to_redis(self) -> dict[str, str]:
        """The hash fields of ``cs:{p}:<sid>:meta`` (all strings; lists and dicts as JSON)."""
        fields = {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "account_sid": self.account_sid,
            "from": self.from_,
            "to": self.to,
            "tracks": ",".join(self.tracks),
            "channels": str(self.channels),
            "started_at": f"{self.started_at:.3f}",
            "status": str(self.status),
            "custom_parameters": json.dumps(self.custom_parameters),
        }
        if self.ended_at is not None:
            fields["ended_at"] = f"{self.ended_at:.3f}"
        if self.failure is not None:
            fields["failure"] = self.failure
        return fields

    @classmethod
    def from_redis(cls, fields: dict[Any, Any]) -> CallMeta:
        """Read ``cs:{p}:<sid>:meta`` as returned by HGETALL (bytes or str keys and values).

        Raises:
            ValueError: the hash is empty or lacks ``call_sid``.
        """
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        if not f.get("call_sid"):
            raise ValueError("no call metadata")
        tracks = [t for t in f.get("tracks", "").split(",") if t]
        try:
            params = json.loads(f.get("custom_parameters") or "{}")
        except ValueError:
            params = {}
        return cls(
            call_sid=f["call_sid"],
            stream_sid=f.get("stream_sid", ""),
            account_sid=f.get("account_sid", ""),
            **{"from": f.get("from", "")},
            to=f.get("to", ""),
            tracks=tracks or ["inbound"],
            channels=int(f.get("channels") or len(tracks) or 1),
            started_at=float(f.get("started_at") or 0.0),
            ended_at=float(f["ended_at"]) if f.get("ended_at") else None,
            status=CallStatus(status) if (status := f.get("status")) in _STATUSES else CallStatus.LIVE,
            custom_parameters=params if isinstance(params, dict) else {},
            failure=f.get("failure") or None,
        )


class CallStarted(_Event):
    """Pushed on ``cs:calls:events`` when ingest receives a ``start``."""

    type: Literal["call_started"] = "call_started"
    call: CallMeta


class CallUpdated(_Event):
    """Pushed on ``cs:calls:events`` when a live call's ``status`` changes: ``queued`` → ``live``
    when a transcriber claims it, ``live`` → ``queued`` when a stopping one hands it back."""

    type: Literal["call_updated"] = "call_updated"
    call: CallMeta


class CallEnded(_Event):
    """Pushed on ``cs:calls:events`` when the transcriber has published the call's last final."""

    type: Literal["call_ended"] = "call_ended"
    call: CallMeta


class CallSummary(CallMeta):
    """One call of a history page: its metadata and what a supervisor wants at a glance.

    ``started``/``ended``: ``started_at``/``ended_at`` as ISO 8601 with the zone (UTC,
    ``2026-12-03T18:21:14.126+00:00``). ``duration_s``: seconds from start to end, or to now for
    a call not ended. ``finals``: finals in its history. ``direction``: Twilio's ``Direction``
    parameter (``inbound``, ``outbound-dial``…), empty when the stream did not carry it.
    """

    started: str = ""
    ended: str | None = None
    duration_s: float = 0.0
    finals: int = 0
    direction: str = ""


class HistoryPage(_Event):
    """The answer to a ``history`` request and to ``GET /v1/calls`` with filters: calls newest
    first; ``next_cursor`` continues after the last of them (None: nothing more)."""

    type: Literal["history_page"] = "history_page"
    calls: list[CallSummary]
    next_cursor: str | None = None


class CallList(_Event):
    """The answer to a ``list`` request on ``/v1/ws``: the live and queued calls the token may see."""

    type: Literal["calls"] = "calls"
    calls: list[CallMeta]


class Subscribed(_Event):
    """The answer to a ``subscribe`` on ``/v1/ws``, before the call's replayed finals."""

    type: Literal["subscribed"] = "subscribed"
    call_sid: str


class Unsubscribed(_Event):
    """The answer to an ``unsubscribe`` on ``/v1/ws``: nothing more of the call follows."""

    type: Literal["unsubscribed"] = "unsubscribed"
    call_sid: str


class EndEvent(_Event):
    """On ``cs:{p}:<sid>:live``: the call is over and every final transcript has been published."""

    type: Literal["end"] = "end"
    call_sid: str


class ErrorEvent(_Event):
    """Sent to a client: what it did wrong (``code``) and in words (``message``)."""

    type: Literal["error"] = "error"
    code: str
    message: str
    call_sid: str | None = None


class AudioStopped(_Event):
    """On ``cs:{p}:<sid>:live``: nothing new reached the call's audio stream for ``idle_s`` seconds.

    Twilio sends packets through silence, so a few seconds without audio means the stream is in
    trouble (its ingest died, or Twilio stopped sending). ``at_s``: call seconds where the audio
    stopped. The call is ended after ``AUDIO_IDLE_S`` without audio, unless ``audio_resumed``
    comes first.
    """

    type: Literal["audio_stopped"] = "audio_stopped"
    call_sid: str
    at_s: float
    idle_s: float


class AudioResumed(_Event):
    """On ``cs:{p}:<sid>:live``: audio reaches the call again after an ``audio_stopped``;
    ``at_s``: call seconds where it resumed."""

    type: Literal["audio_resumed"] = "audio_resumed"
    call_sid: str
    at_s: float


LiveEvent = Annotated[
    TranscriptEvent | EndEvent | ErrorEvent | AudioStopped | AudioResumed,
    Field(discriminator="type"),
]
"""What the transcriber publishes on ``cs:{p}:<sid>:live`` (``error``: ASR failed, or data lost)."""
live_event_adapter: TypeAdapter[LiveEvent] = TypeAdapter(LiveEvent)
CallEvent = Annotated[CallStarted | CallUpdated | CallEnded, Field(discriminator="type")]
call_event_adapter: TypeAdapter[CallEvent] = TypeAdapter(CallEvent)
ServerMessage = Annotated[
    CallList
    | Subscribed
    | Unsubscribed
    | HistoryPage
    | CallStarted
    | CallUpdated
    | CallEnded
    | TranscriptEvent
    | EndEvent
    | ErrorEvent
    | AudioStopped
    | AudioResumed,
    Field(discriminator="type"),
]
"""Everything the gateway sends a ``/v1/ws`` client (``callscribe watch`` parses with it)."""
server_message_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


# --------------------------------------------------------------------------- /v1/ws client protocol


class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListRequest(_ClientMessage):
    """``{"type": "list"}``: answer ``calls``; then push ``call_started``/``call_ended``."""

    type: Literal["list"]


_STREAM_ID_RE = re.compile(r"\$|0|[0-9]+-[0-9]+")
_STREAM_ID_PART_MAX = 2**64 - 1


def is_stream_id(text: str) -> bool:
    """Whether ``text`` is a ``since`` Redis takes: ``$``, ``0`` or ``<ms>-<seq>`` in ASCII
    digits, the whole string (no trailing newline), each part at most 2**64 - 1 (Redis refuses
    a larger one, which the gateway would otherwise retry as an outage)."""
    if not _STREAM_ID_RE.fullmatch(text):
        return False
    return text in ("$", "0") or all(int(p) <= _STREAM_ID_PART_MAX for p in text.split("-"))


def _stream_id_or_none(text: str | None) -> str | None:
    if text is not None and not is_stream_id(text):
        raise ValueError("not a stream ID (like 1700000000000-0, 0 or $)")
    return text


class SubscribeRequest(_ClientMessage):
    """``{"type": "subscribe", "call_sid": "CA…", "since": "0"}``.

    ``since`` is a history stream ID: finals after it are replayed first, then the call
    continues live with no gap and no duplicate. ``"0"`` replays the whole history; ``null``
    (the default) means live only.
    """

    type: Literal["subscribe"]
    call_sid: str = Field(min_length=1, max_length=64)
    since: Annotated[str | None, AfterValidator(_stream_id_or_none)] = None


class UnsubscribeRequest(_ClientMessage):
    """``{"type": "unsubscribe", "call_sid": "CA…"}``."""

    type: Literal["unsubscribe"]
    call_sid: str = Field(min_length=1, max_length=64)


class HistoryRequest(_ClientMessage):
    """``{"type": "history", "status": "ended", "number": "+1555", "q": "cleaning"}``: recent
    calls (queued, live and ended), filtered, newest first, one page (answer: ``history_page``).

    ``from``/``to``: start time bounds, ISO 8601 (``2026-12-03T09:00:00Z``) or Unix seconds.
    ``number``: part of the caller's or callee's number. ``q``: words every one of which the
    call's transcript contains. ``cursor``: a ``next_cursor`` from the previous page.
    ``limit``: calls per page.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["history"]
    status: CallStatus | None = None
    number: str | None = Field(default=None, max_length=32)
    from_: str | None = Field(default=None, alias="from", max_length=40)
    to: str | None = Field(default=None, max_length=40)
    q: str | None = Field(default=None, max_length=200)
    cursor: str | None = Field(default=None, max_length=120)
    limit: int = Field(default=50, ge=1, le=200)


ClientRequest = Annotated[
    ListRequest | SubscribeRequest | UnsubscribeRequest | HistoryRequest,
    Field(discriminator="type"),
]
_client_adapter: TypeAdapter[ClientRequest] = TypeAdapter(ClientRequest)


def parse_client(raw: str | bytes) -> ClientRequest:
    """Parse one ``/v1/ws`` client message.

    Raises:
        ClientMessageError: ``bad_json`` or ``bad_request`` (unknown ``type``, missing field).
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ClientMessageError("bad_json", "messages must be JSON objects") from None
    if not isinstance(data, dict):
        raise ClientMessageError("bad_json", "messages must be JSON objects")
    try:
        return _client_adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "type"
        raise ClientMessageError(
            "bad_request",
            f"{where}: {first['msg']} (types: list, subscribe, unsubscribe, history)",
        ) from None


# --------------------------------------------------------------------------- Redis stream entries


class AudioFrame(BaseModel):
    """One entry of ``cs:{p}:<sid>:audio``: a mixed frame, or the ``eof`` marker.

    ``t_ms`` is the frame's start in ms from the stream start. ``pcmu`` is mu-law 8 kHz,
    interleaved when ``channels`` is 2 (channel 0 = inbound/caller, 1 = outbound/callee):
    ``len(pcmu) == 8 * duration_ms * channels``. The ``eof`` entry carries no audio and ``t_ms``
    is the end of the call's audio. Redis fields: ``t`` (ASCII int), ``pcmu`` (raw bytes) or
    ``eof`` (``"1"``).
    """

    model_config = ConfigDict(frozen=True)

    t_ms: int = Field(ge=0)
    pcmu: bytes = b""
    eof: bool = False

    def to_redis(self) -> dict[str, bytes | str]:
        """The stream entry's fields."""
        if self.eof:
            return {"t": str(self.t_ms), "eof": "1"}
        return {"t": str(self.t_ms), "pcmu": self.pcmu}

    @classmethod
    def from_redis(cls, fields: dict[Any, Any]) -> AudioFrame:
        """Read an entry as returned by XREAD (bytes keys).

        Raises:
            ValueError: no ``t`` field, or neither ``pcmu`` nor ``eof``.
        """
        t = fields.get(b"t", fields.get("t"))
        if t is None:
            raise ValueError("audio entry without t")
        if fields.get(b"eof", fields.get("eof")) is not None:
            return cls(t_ms=int(t), eof=True)
        pcmu = fields.get(b"pcmu", fields.get("pcmu"))
        if pcmu is None:
            raise ValueError("audio entry without pcmu or eof")
        return cls(t_ms=int(t), pcmu=bytes(pcmu))


# --------------------------------------------------------------------------- Redis strings


class WorkerHealth(BaseModel):
    """A transcriber's health record: the JSON string in ``cs:worker:<consumer>``.

    ``calls``: the calls the worker serves now. ``ts``: Unix time of the write, s.
    ``asr_ok``: False while the start-up probe finds the speech engine unreachable (a record
    without it counts as True). Written by the worker's lease loop every ``LEASE_RENEW_S``
    (:mod:`services.transcriber.lease`), read by ``callscribe transcriber --check``
    (:mod:`services.transcriber.health`).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    calls: int = Field(ge=0)
    ts: FiniteFloat
    asr_ok: StrictBool = True

    def to_redis(self) -> str:
        """The key's value: ``{"calls":…,"ts":…,"asr_ok":…}``."""
        return self.model_dump_json()

    @classmethod
    def from_redis(cls, raw: bytes | str | None) -> WorkerHealth:
        """Read the key's value as returned by GET (None when the key does not exist).

        Raises:
            ValueError: no value, not JSON, or a field missing or of the wrong type (``calls``
                not an int ≥ 0, ``ts`` not a finite number, ``asr_ok`` not a bool;
                pydantic's ValidationError).
        """
        if raw is None:
            raise ValueError("no worker health record")
        return cls.model_validate_json(raw)
