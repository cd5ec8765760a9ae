"""The per-connection Twilio state machine: order, validation and what it hands to publish."""

from __future__ import annotations

import base64
import json

import pytest

from callscribe.twilio_messages import SimCall, twilio_messages
from services.ingest.twilio import CallEnd, CallStart, Phase, TwilioStream
from shared.errors import TwilioMessageError
from shared.schema import AudioFrame


def new_stream() -> TwilioStream:
    return TwilioStream(frame_ms=100, reorder_ms=20, max_gap_ms=1000)


def start_msg(**overrides: object) -> str:
    media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    media_format.update(overrides)  # type: ignore[arg-type]
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC1",
                "streamSid": "MZ1",
                "callSid": "CA1",
                "tracks": ["outbound", "inbound"],
                "customParameters": {"From": "+15550001", "To": "+15550002", "Direction": "in"},
                "mediaFormat": media_format,
            },
            "streamSid": "MZ1",
        }
    )


def media_msg(track: str = "inbound", ts: int = 0, payload: str | None = None) -> str:
    if payload is None:
        payload = base64.b64encode(b"\x01" * 160).decode()
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": "2",
            "media": {"track": track, "chunk": "1", "timestamp": str(ts), "payload": payload},
            "streamSid": "MZ1",
        }
    )


def code_of(stream: TwilioStream, raw: str) -> str:
    with pytest.raises(TwilioMessageError) as err:
        stream.feed(raw)
    return err.value.code


def test_start_builds_meta_with_from_to_and_inbound_first() -> None:
    """start yields CallStart: From/To lifted out, Direction kept, channel order inbound first."""
    s = new_stream()
    (action,) = s.feed(start_msg())
    assert isinstance(action, CallStart)
    meta = action.meta
    assert (meta.call_sid, meta.stream_sid, meta.account_sid) == ("CA1", "MZ1", "AC1")
    assert (meta.from_, meta.to) == ("+15550001", "+15550002")
    assert meta.custom_parameters == {"Direction": "in"}
    assert meta.tracks == ["inbound", "outbound"] and meta.channels == 2
    assert s.phase is Phase.STARTED


def test_unsupported_media_format_is_fatal_and_does_not_start() -> None:
    """A start that is not 8 kHz mu-law mono raises unsupported_media_format."""
    s = new_stream()
    assert code_of(s, start_msg(encoding="audio/l16")) == "unsupported_media_format"
    assert code_of(s, start_msg(sampleRate=16000)) == "unsupported_media_format"
    assert s.phase is Phase.OPEN and s.meta is None


def test_media_before_start_and_second_start_are_refused() -> None:
    """media before start and a second start raise their codes and change nothing."""
    s = new_stream()
    assert code_of(s, media_msg()) == "media_before_start"
    s.feed(start_msg())
    assert code_of(s, start_msg()) == "second_start"
    assert s.meta is not None and s.meta.call_sid == "CA1"


def test_bad_payload_and_unknown_track_are_refused() -> None:
    """Non-base64 or empty payloads raise bad_payload; a track outside the stream unknown_track."""
    s = TwilioStream(frame_ms=100, reorder_ms=20, max_gap_ms=1000)
    s.feed(start_msg())
    assert code_of(s, media_msg(payload="@@not base64@@")) == "bad_payload"
    assert code_of(s, media_msg(payload="")) == "bad_payload"
    mono = TwilioStream(frame_ms=100, reorder_ms=20, max_gap_ms=1000)
    mono.feed(start_msg().replace('["outbound", "inbound"]', '["inbound"]'))
    assert code_of(mono, media_msg(track="outbound")) == "unknown_track"


def test_parse_errors_carry_codes() -> None:
    """Not JSON, unknown events and malformed messages raise bad_json/unknown_event/bad_message."""
    s = new_stream()
    assert code_of(s, "not json") == "bad_json"
    assert code_of(s, '{"event": "hello"}') == "unknown_event"
    assert code_of(s, '{"event": "media"}') == "bad_message"


def test_dtmf_and_mark_are_counted_and_ignored() -> None:
    """dtmf and mark produce nothing to publish."""
    s = new_stream()
    s.feed(start_msg())
    assert s.feed('{"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}') == ()
    assert s.feed('{"event": "mark", "mark": {"name": "m1"}}') == ()
    assert (s.dtmf, s.marks) == (1, 1)


def test_stop_flushes_then_ends_and_later_media_is_refused() -> None:
    """stop emits the remaining frames, then CallEnd; media afterwards is media_after_stop."""
    s = new_stream()
    s.feed(start_msg())
    assert s.feed(media_msg("inbound", 0)) == []
    actions = list(s.feed('{"event": "stop", "stop": {"callSid": "CA1"}}'))
    assert isinstance(actions[0], AudioFrame) and actions[0].t_ms == 0
    assert actions[-1] == CallEnd("CA1", 20, "stop")
    assert code_of(s, media_msg()) == "media_after_stop"
    assert s.close("disconnect") == ()


def test_simulated_call_replays_to_exact_bytes() -> None:
    """Every message of the simulator parses, and the frames rebuild both tracks exactly."""
    inbound = bytes(range(256)) * 5  # 1280 bytes = 8 packets
    outbound = bytes(reversed(range(256))) * 5
    call = SimCall(tracks=[inbound, outbound], drop_packets=frozenset({("outbound", 3)}))
    s = new_stream()
    frames: list[AudioFrame] = []
    ends = []
    for _, text in twilio_messages(call):
        for a in s.feed(text):
            if isinstance(a, AudioFrame):
                frames.append(a)
            elif isinstance(a, CallEnd):
                ends.append(a)
    pcmu = b"".join(f.pcmu for f in frames)
    lost = bytearray(outbound)
    lost[320:480] = b"\xff" * 160
    assert pcmu[0::2] == inbound
    assert pcmu[1::2] == bytes(lost)
    assert ends == [CallEnd(call.call_sid, 160, "stop")]
