"""Deepgram protocol, pure: URL, message parsing, Results → TranscriptEvent."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from services.transcriber.dgproto import (
    DeepgramMessageError,
    SegmentTracker,
    build_url,
    parse_message,
    parse_results,
    results_to_event,
)

SID = "CA1"


def results(
    ch: int = 0,
    start: float = 1.0,
    duration: float = 2.0,
    *,
    text: str = "hi there",
    is_final: bool = False,
) -> dict[str, Any]:
    """A Results message as Deepgram sends it."""
    words = [
        {
            "word": w.lower(),
            "start": start + i * 0.5,
            "end": start + i * 0.5 + 0.4,
            "confidence": 0.9,
            "punctuated_word": w,
        }
        for i, w in enumerate(text.split())
    ]
    return {
        "type": "Results",
        "channel_index": [ch, 2],
        "start": start,
        "duration": duration,
        "is_final": is_final,
        "speech_final": is_final,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": words}]},
        "metadata": {"request_id": "x"},
        "from_finalize": False,
    }


def to_event(msg: dict[str, Any], segments: SegmentTracker, offset_s: float = 0.0):  # type: ignore[no-untyped-def]
    """Map one dict with the call's defaults."""
    return results_to_event(
        parse_results(msg), call_sid=SID, channels=2, offset_s=offset_s, segments=segments
    )


def test_url_has_raw_audio_params_and_overrides_win() -> None:
    """The URL asks for mulaw 8 kHz multichannel interim results; extra params override defaults."""
    url = build_url(
        "wss://api.deepgram.com/v1/listen",
        channels=2,
        model="nova-2",
        language="en-US",
        extra_params="punctuate=false&numerals=true",
    )
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert urlsplit(url).path == "/v1/listen"
    assert q == {
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "2",
        "multichannel": "true",
        "interim_results": "true",
        "punctuate": "false",
        "model": "nova-2",
        "language": "en-US",
        "numerals": "true",
    }


def test_interims_share_a_segment_that_the_final_closes() -> None:
    """Interims of one stretch keep one segment; the final closes it; the next stretch gets a new one."""
    segs = SegmentTracker(5)
    a = to_event(results(text="hi"), segs)
    b = to_event(results(text="hi there"), segs)
    c = to_event(results(text="hi there", is_final=True), segs)
    d = to_event(results(start=4.0, text="next"), segs)
    assert (a.segment, b.segment, c.segment, d.segment) == (5, 5, 5, 6)
    assert c.is_final and c.speech_final and not a.is_final
    assert c.speaker == "caller"


def test_channels_have_their_own_segments_and_speakers() -> None:
    """Channel 1 is the callee and opens its own segment while channel 0's is open."""
    segs = SegmentTracker()
    a = to_event(results(0, text="caller talks"), segs)
    b = to_event(results(1, text="callee talks"), segs)
    assert (a.segment, b.segment) == (0, 1)
    assert (a.speaker, b.speaker, b.channel) == ("caller", "callee", 1)


def test_times_are_shifted_by_the_connection_offset() -> None:
    """Start, end and word times are connection seconds plus the connection's offset in the call."""
    e = to_event(
        results(start=1.0, duration=2.0, text="hello you", is_final=True),
        SegmentTracker(),
        offset_s=10.0,
    )
    assert (e.start, e.end) == (11.0, 13.0)
    assert [(w.word, w.start, w.end) for w in e.words] == [
        ("hello", 11.0, 11.4),
        ("you", 11.5, 11.9),
    ]


def test_empty_interim_is_skipped_and_empty_final_closes_its_segment() -> None:
    """An empty interim opens nothing; an empty final closes the open segment (so a client
    clears its interim), and one in silence comes with a fresh segment (progress only)."""
    segs = SegmentTracker()
    assert to_event(results(text=""), segs) is None
    assert to_event(results(text="hi"), segs).segment == 0  # type: ignore[union-attr]
    cleared = to_event(results(text="", is_final=True), segs)
    assert cleared is not None and (cleared.segment, cleared.text, cleared.words) == (0, "", [])
    silence = to_event(results(start=3.0, duration=2.0, text="", is_final=True), segs)
    assert silence is not None and silence.segment == 1 and silence.end == 5.0
    assert to_event(results(text="again"), segs).segment == 2  # type: ignore[union-attr]


def test_channel_out_of_range_is_a_documented_error() -> None:
    """channel_index beyond the call's channels raises DeepgramMessageError, not IndexError."""
    with pytest.raises(DeepgramMessageError) as info:
        results_to_event(
            parse_results(results(1)),
            call_sid=SID,
            channels=1,
            offset_s=0,
            segments=SegmentTracker(),
        )
    assert info.value.code == "bad_results"


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", b"\xff\xfe", "42"])
def test_non_object_messages_are_bad_json(raw: str | bytes) -> None:
    """Anything but a JSON object is refused with code bad_json."""
    with pytest.raises(DeepgramMessageError) as info:
        parse_message(raw)
    assert info.value.code == "bad_json"


def test_message_without_type_gets_empty_type() -> None:
    """A JSON object without a string type parses with type '' so dispatch ignores it."""
    assert parse_message('{"type": 3}')["type"] == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "channel_index": json_values | st.lists(st.integers(-2, 3), max_size=3),
            "start": json_values | st.floats(min_value=-1, max_value=1e6),
            "duration": json_values | st.floats(min_value=-1, max_value=1e6),
            "is_final": json_values | st.booleans(),
            "speech_final": json_values,
            "channel": json_values
            | st.fixed_dictionaries(
                {
                    "alternatives": st.lists(
                        st.dictionaries(
                            st.sampled_from(["transcript", "confidence", "words"]), json_values
                        ),
                        max_size=2,
                    )
                }
            ),
        },
    ),
    channels=st.integers(1, 2),
)
@example(  # an empty final (no alternatives) is an event: it moves the checkpoint through silence
    fields={
        "channel_index": [0, 1],
        "start": 0.0,
        "duration": 1.0,
        "is_final": True,
        "channel": {"alternatives": []},
    },
    channels=1,
)
def test_any_results_shaped_dict_maps_or_raises_documented_error(
    fields: dict[str, Any], channels: int
) -> None:
    """Any Results-shaped dict maps to an event/None or raises DeepgramMessageError, never another error."""
    msg = {"type": "Results", **fields}
    try:
        event = results_to_event(
            parse_results(msg),
            call_sid=SID,
            channels=channels,
            offset_s=0.0,
            segments=SegmentTracker(),
        )
    except DeepgramMessageError as exc:
        assert exc.code == "bad_results"
        return
    if event is not None:  # only a final may be empty (it clears interims, moves the checkpoint)
        assert (event.text or event.is_final) and event.channel < channels
