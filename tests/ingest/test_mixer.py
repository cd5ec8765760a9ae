"""The mixer places every byte where its timestamp says and emits contiguous frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.mixer import Mixer
from shared.errors import TwilioMessageError
from shared.schema import AudioFrame

S = 0xFF  # mu-law silence


def pkt(value: int, ms: int = 20) -> bytes:
    """A packet of ``ms`` of one constant byte."""
    return bytes([value]) * (8 * ms)


def joined(frames: list[AudioFrame]) -> bytes:
    return b"".join(f.pcmu for f in frames)


def stereo(ch0: bytes, ch1: bytes) -> bytes:
    out = bytearray(2 * len(ch0))
    out[0::2], out[1::2] = ch0, ch1
    return bytes(out)


def test_in_order_stereo_interleaves_and_emits_after_reorder_window() -> None:
    """Frames come out once the clock passes frame end + reorder, channel 0 inbound, 1 outbound."""
    m = Mixer(2, frame_ms=40, reorder_ms=20, max_gap_ms=1000)
    assert m.add("inbound", 0, pkt(1)) == []
    assert m.add("outbound", 0, pkt(2)) == []
    assert m.add("inbound", 20, pkt(3)) == []
    assert m.add("outbound", 20, pkt(4)) == []
    out = m.add("inbound", 40, pkt(5))  # clock 60 = 40 + 20: frame [0, 40) is complete
    assert [f.t_ms for f in out] == [0]
    assert out[0].pcmu == stereo(pkt(1) + pkt(3), pkt(2) + pkt(4))
    tail = m.flush()
    assert [f.t_ms for f in tail] == [40]
    assert tail[0].pcmu == stereo(pkt(5), pkt(S))


def test_lost_packet_becomes_silence_of_its_length() -> None:
    """A missing 20 ms packet leaves exactly 160 bytes of 0xFF in its place."""
    m = Mixer(1, frame_ms=20, reorder_ms=0, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1)) + m.add("inbound", 40, pkt(3)) + m.flush()
    assert joined(frames) == pkt(1) + pkt(S) + pkt(3)
    assert [f.t_ms for f in frames] == [0, 20, 40]
    assert m.lost_ms == 20


def test_late_starting_track_is_silence_until_it_starts() -> None:
    """An outbound track that begins at 60 ms is silent on channel 1 before that."""
    m = Mixer(2, frame_ms=100, reorder_ms=20, max_gap_ms=1000)
    frames = []
    for t in range(0, 100, 20):
        frames += m.add("inbound", t, pkt(1))
        if t >= 60:
            frames += m.add("outbound", t, pkt(2))
    frames += m.flush()
    assert joined(frames) == stereo(pkt(1, 100), pkt(S, 60) + pkt(2, 40))
    assert m.filled_bytes == [0, 480]


def test_reordered_packet_within_window_lands_at_its_time() -> None:
    """A packet that arrives after a later one, inside the reorder window, is placed in time."""
    m = Mixer(1, frame_ms=20, reorder_ms=40, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1)) + m.add("inbound", 40, pkt(3))
    frames += m.add("inbound", 20, pkt(2)) + m.flush()
    assert joined(frames) == pkt(1) + pkt(2) + pkt(3)
    assert m.late_packets == 0


def test_too_late_packet_is_counted_and_dropped() -> None:
    """A packet whose frame was already emitted is dropped and counted, leaving silence."""
    m = Mixer(1, frame_ms=20, reorder_ms=0, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1)) + m.add("inbound", 40, pkt(3))
    assert m.add("inbound", 20, pkt(2)) == []
    frames += m.flush()
    assert joined(frames) == pkt(1) + pkt(S) + pkt(3)
    assert m.late_packets == 1
    assert m.packets == 2


def test_late_packet_straddling_a_frame_start_keeps_its_timely_part() -> None:
    """A late packet's bytes in an emitted frame are dropped; its bytes after it land in time."""
    m = Mixer(2, frame_ms=20, reorder_ms=20, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1)) + m.add("inbound", 20, pkt(1))  # clock 40: [0, 20) out
    frames += m.add("outbound", 15, pkt(2))  # [15, 35): 5 ms too late, 15 ms in time
    frames += m.add("inbound", 40, pkt(1)) + m.flush()
    assert joined(frames) == stereo(pkt(1, 60), pkt(S, 20) + pkt(2, 15) + pkt(S, 25))
    assert (m.late_packets, m.packets) == (1, 4)


def test_duplicate_packet_lands_once() -> None:
    """The same packet twice overwrites itself: no extra audio, counted as duplicate."""
    m = Mixer(1, frame_ms=20, reorder_ms=20, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1)) + m.add("inbound", 0, pkt(1)) + m.flush()
    assert joined(frames) == pkt(1)
    assert m.duplicate_packets == 1


def test_single_track_frames_are_just_channel_zero() -> None:
    """A mono stream of the outbound track alone emits its bytes unchanged."""
    m = Mixer(1, frame_ms=40, reorder_ms=0, max_gap_ms=1000, tracks=("outbound",))
    data = bytes(range(160)) + bytes(range(50, 210)) + bytes(range(80))  # 50 ms
    frames = m.add("outbound", 0, data[:160]) + m.add("outbound", 20, data[160:320])
    frames += m.add("outbound", 40, data[320:]) + m.flush()
    assert joined(frames) == data
    with pytest.raises(TwilioMessageError) as err:
        Mixer(1, frame_ms=40, reorder_ms=0, max_gap_ms=1000, tracks=("outbound",)).add(
            "inbound", 0, pkt(1)
        )
    assert err.value.code == "unknown_track"


def test_flush_pads_both_channels_to_the_longest_track() -> None:
    """The tail frame is short and the shorter track is padded with silence to the same end."""
    m = Mixer(2, frame_ms=100, reorder_ms=60, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1, 20)) + m.add("outbound", 0, pkt(2, 20))
    frames += m.add("outbound", 20, pkt(2, 20)) + m.flush()
    assert [f.t_ms for f in frames] == [0]
    assert frames[0].pcmu == stereo(pkt(1) + pkt(S), pkt(2, 40))
    assert m.flush() == []


def test_timestamp_jump_beyond_max_gap_is_refused_and_not_placed() -> None:
    """A packet more than max_gap_ms past the clock raises bad_timestamp and changes nothing."""
    m = Mixer(1, frame_ms=20, reorder_ms=0, max_gap_ms=100)
    frames = m.add("inbound", 0, pkt(1))
    with pytest.raises(TwilioMessageError) as err:
        m.add("inbound", 200, pkt(9))
    assert err.value.code == "bad_timestamp"
    frames += m.add("inbound", 120, pkt(2)) + m.flush()  # a jump within max_gap is loss
    assert joined(frames) == pkt(1) + pkt(S, 100) + pkt(2)


def test_long_jump_within_max_gap_emits_silence_frames() -> None:
    """A jump larger than the working window still emits every silent frame in between."""
    m = Mixer(2, frame_ms=20, reorder_ms=0, max_gap_ms=10_000)
    frames = m.add("inbound", 0, pkt(1)) + m.add("inbound", 1000, pkt(2)) + m.flush()
    assert [f.t_ms for f in frames] == list(range(0, 1020, 20))
    assert joined(frames) == stereo(pkt(1) + pkt(S, 980) + pkt(2), pkt(S, 1020))


@settings(max_examples=200, deadline=None)
@given(
    channels=st.sampled_from([1, 2]),
    frame_ms=st.sampled_from([20, 30, 100]),
    reorder_ms=st.sampled_from([0, 20, 60]),
    packets=st.lists(
        st.tuples(
            st.integers(0, 1),
            st.integers(0, 400),
            st.integers(1, 400),
            st.integers(0, 254),
        ),
        max_size=40,
    ),
)
def test_any_packet_sequence_gives_contiguous_exact_output(
    channels: int, frame_ms: int, reorder_ms: int, packets: list[tuple[int, int, int, int]]
) -> None:
    """Any packets: frames contiguous from 0, 8*end*channels bytes, every byte not late at its time."""
    m = Mixer(channels, frame_ms=frame_ms, reorder_ms=reorder_ms, max_gap_ms=10_000)
    names = ("inbound", "outbound")
    expected = [bytearray() for _ in range(channels)]
    frames: list[AudioFrame] = []
    max_end_b = 0
    for track, ts, length, value in packets:
        ch = track % channels
        emitted_b = len(joined(frames)) // channels
        frames += m.add(names[ch], ts, bytes([value]) * length)
        start, end = ts * 8, ts * 8 + length
        if end > emitted_b:  # its bytes not in a frame already emitted must appear at their time
            max_end_b = max(max_end_b, end)
            buf = expected[ch]
            if len(buf) < end:
                buf.extend(b"\xff" * (end - len(buf)))
            lo = max(start, emitted_b)
            buf[lo:end] = bytes([value]) * (end - lo)
    frames += m.flush()
    end_ms = -(-max_end_b // 8)
    t = 0
    for f in frames:
        assert f.t_ms == t
        assert len(f.pcmu) % channels == 0
        t += len(f.pcmu) // channels // 8
    out = joined(frames)
    assert len(out) == 8 * end_ms * channels
    for ch in range(channels):
        got = out[ch::channels]
        want = bytes(expected[ch]) + b"\xff" * (len(got) - len(expected[ch]))
        assert got == want
