"""Wire models: Twilio messages, our events, the client protocol, Redis encodings."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ClientMessageError, TwilioMessageError
from shared.schema import (
    AudioFrame,
    CallMeta,
    SubscribeRequest,
    TranscriptEvent,
    TwilioMedia,
    TwilioStart,
    Word,
    parse_client,
    parse_media,
    parse_twilio,
)

START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC" + "0" * 32,
        "streamSid": "MZ" + "1" * 32,
        "callSid": "CA" + "2" * 32,
        "tracks": ["inbound", "outbound"],
        "customParameters": {"From": "+15550001111"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": "MZ" + "1" * 32,
}


def test_start_and_media_parse_with_numeric_strings() -> None:
    """Numeric fields that Twilio sends as strings become ints."""
    start = parse_twilio(json.dumps(START))
    assert isinstance(start, TwilioStart)
    assert start.sequence_number == 1 and start.start.tracks == ["inbound", "outbound"]
    media = parse_twilio(
        json.dumps(
            {
                "event": "media",
                "sequenceNumber": "3",
                "media": {"track": "outbound", "chunk": "2", "timestamp": "20", "payload": "//8="},
                "streamSid": "MZ1",
            }
        )
    )
    assert isinstance(media, TwilioMedia)
    assert (media.media.chunk, media.media.timestamp) == (2, 20)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"event": "hello"}', "unknown_event"),
        ('{"no": "event"}', "unknown_event"),
        ('{"event": "media", "media": {"track": "inbound"}}', "bad_message"),
        (
            '{"event": "media", "media": {"track": "sideways", "chunk": "1", "timestamp": "0", "payload": ""}}',
            "bad_message",
        ),
        ('{"event": "start", "start": {}}', "bad_message"),
    ],
)
def test_bad_twilio_messages_raise_a_coded_error(raw: str, code: str) -> None:
    """Each kind of malformed message raises TwilioMessageError with its code."""
    with pytest.raises(TwilioMessageError) as info:
        parse_twilio(raw)
    assert info.value.code == code


@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8)).map(json.dumps),
    )
)
def test_any_input_is_parsed_or_refused_with_the_documented_error(raw: str | bytes) -> None:
    """Arbitrary input never raises anything but TwilioMessageError."""
    with contextlib.suppress(TwilioMessageError):
        parse_twilio(raw)


def test_call_meta_round_trips_through_a_redis_hash() -> None:
    """CallMeta → HSET fields → HGETALL bytes → CallMeta keeps every field."""
    meta = CallMeta(
        call_sid="CA1",
        stream_sid="MZ1",
        **{"from": "+1555"},
        to="+1666",
        tracks=["inbound"],
        channels=1,
        started_at=12.5,
        custom_parameters={"Direction": "inbound"},
    )
    raw = {k.encode(): v.encode() for k, v in meta.to_redis().items()}
    back = CallMeta.from_redis(raw)
    assert back == meta
    assert json.loads(back.model_dump_json(by_alias=True))["from"] == "+1555"
    with pytest.raises(ValueError):
        CallMeta.from_redis({})


def test_transcript_history_entry_restores_the_id() -> None:
    """A final stored without its id comes back with the stream entry ID as id."""
    ev = TranscriptEvent(
        call_sid="CA1",
        segment=3,
        channel=1,
        speaker="callee",
        is_final=True,
        start=1.0,
        end=2.0,
        text="hi",
        words=[Word(word="hi", start=1.0, end=2.0)],
    )
    fields = {k.encode(): v.encode() for k, v in ev.to_history().items()}
    assert b'"id"' not in fields[b"e"]
    back = TranscriptEvent.from_history(b"5-1", fields)
    assert back.id == "5-1" and back.text == "hi" and back.words[0].end == 2.0


def test_audio_frame_fields() -> None:
    """Frames and the eof marker encode to the documented stream fields and back."""
    f = AudioFrame(t_ms=100, pcmu=b"\xff\x00")
    assert f.to_redis() == {"t": "100", "pcmu": b"\xff\x00"}
    assert AudioFrame.from_redis({b"t": b"100", b"pcmu": b"\xff\x00"}) == f
    assert AudioFrame.from_redis({b"t": b"900", b"eof": b"1"}).eof
    with pytest.raises(ValueError):
        AudioFrame.from_redis({b"pcmu": b""})


def test_client_messages() -> None:
    """The /v1/ws protocol parses its three requests and refuses nonsense with a code."""
    sub = parse_client('{"type": "subscribe", "call_sid": "CA1", "since": "0"}')
    assert isinstance(sub, SubscribeRequest) and sub.since == "0"
    for since in ("$", "18446744073709551615-18446744073709551615", None):
        assert SubscribeRequest(type="subscribe", call_sid="CA1", since=since).since == since
    for raw, code in [
        ("{", "bad_json"),
        ('{"type": "dance"}', "bad_request"),
        ('{"type": "subscribe"}', "bad_request"),
        ('{"type": "subscribe", "call_sid": "CA1", "since": "yesterday"}', "bad_request"),
        ('{"type": "subscribe", "call_sid": "CA1", "since": "0\\n"}', "bad_request"),
        # a part over 2**64 - 1: Redis refuses it, which the gateway retried as an outage, forever
        ('{"type": "subscribe", "call_sid": "CA1", "since": "18446744073709551616-0"}', "bad_request"),
    ]:
        with pytest.raises(ClientMessageError) as info:
            parse_client(raw)
        assert info.value.code == code


_MEDIA_VALUES = st.one_of(
    st.none(),
    st.integers(-3, 10**6),
    st.text(max_size=6),
    st.sampled_from(["12", "-1", "x", 2**40, 2**40 + 1, "A" * 10_668, "A" * 10_672]),
)


@given(
    track=st.one_of(st.sampled_from(["inbound", "outbound", "inbound_track"]), _MEDIA_VALUES),
    chunk=_MEDIA_VALUES,
    timestamp=_MEDIA_VALUES,
    payload=st.one_of(st.just("AAEC"), _MEDIA_VALUES),
    seq=_MEDIA_VALUES,
    drop=st.sampled_from([None, "track", "chunk", "timestamp", "payload"]),
)
def test_parse_media_fast_path_agrees_with_the_models(
    track: object, chunk: object, timestamp: object, payload: object, seq: object, drop: str | None
) -> None:
    """parse_media accepts exactly the media messages parse_twilio accepts, with the same
    track, timestamp and payload; anything else is left to parse_twilio (None)."""
    media = {"track": track, "chunk": chunk, "timestamp": timestamp, "payload": payload}
    if drop:
        del media[drop]
    raw = json.dumps(
        {"event": "media", "sequenceNumber": seq, "streamSid": seq, "media": media}
    )
    fast = parse_media(raw)
    try:
        msg = parse_twilio(raw)
    except TwilioMessageError:
        assert fast is None
        return
    assert fast == (msg.media.track, msg.media.timestamp, msg.media.payload)  # type: ignore[union-attr]
