"""The mixer places packets by timestamp, tolerating jitter, and emits contiguous frames."""

from __future__ import annotations

import random

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


def ramp(track: int, i: int, length: int = 160) -> bytes:
    """A payload no other packet of the call repeats, with no silence byte in it."""
    head = bytes([i % 250, i // 250 % 250, track])
    return (head + bytes((i * 7 + k) % 250 for k in range(length)))[:length]


def positions(channel: bytes, payloads: list[bytes]) -> list[int]:
    """Where each payload starts in ``channel``, searching after the previous one (-1: absent)."""
    out, pos = [], 0
    for p in payloads:
        at = channel.find(p, pos)
        out.append(at)
        if at >= 0:
            pos = at + len(p)
    return out


@pytest.mark.parametrize("jitter_ms", [1, 2, 5])
def test_jittered_timestamps_give_every_byte_once_in_order(jitter_ms: int) -> None:
    """±1/±2/±5 ms stamp jitter: both channels hold every payload byte in order, no hole, no overwrite, offset within 10 ms."""
    rng = random.Random(jitter_ms)
    n = 500
    m = Mixer(2, frame_ms=100, reorder_ms=60, max_gap_ms=60_000)
    stamps: list[list[int]] = [[], []]
    frames: list[AudioFrame] = []
    for i in range(n):
        for tr, name in enumerate(("inbound", "outbound")):
            ts = 20 * i + (rng.randint(-jitter_ms, jitter_ms) if i else 0)
            stamps[tr].append(ts)
            frames += m.add(name, ts, ramp(tr, i))
    frames += m.flush()
    out = joined(frames)
    for tr in (0, 1):
        sent = b"".join(ramp(tr, i) for i in range(n))
        got = out[tr::2]
        assert got[: len(sent)] == sent
        assert set(got[len(sent) :]) <= {S}
        offsets_ms = [(160 * i - 8 * ts) / 8 for i, ts in enumerate(stamps[tr])]
        assert max(map(abs, offsets_ms)) <= 10  # each packet within 10 ms of its timestamp
        assert m.filled_bytes[tr] == len(got) - len(sent)  # silence only after the last packet
    assert (m.late_packets, m.duplicate_packets, m.jitter_corrections) == (0, 0, 0)


def test_worst_case_alternating_jitter_stays_contiguous() -> None:
    """Stamps alternating 5 ms early and 5 ms late, 10 ms apart in turn, still join up exactly."""
    m = Mixer(1, frame_ms=20, reorder_ms=20, max_gap_ms=1000)
    frames: list[AudioFrame] = []
    for i in range(50):
        frames += m.add("inbound", 20 * i + (0 if i == 0 else 5 if i % 2 else -5), ramp(0, i))
    frames += m.flush()
    assert joined(frames)[: 50 * 160] == b"".join(ramp(0, i) for i in range(50))
    assert m.jitter_corrections == 0


def test_loss_with_jitter_is_silence_of_the_lost_packets() -> None:
    """Two packets lost and the next stamped 3 ms late: exactly 40 ms of silence, then contiguous."""
    m = Mixer(1, frame_ms=20, reorder_ms=0, max_gap_ms=1000)
    frames = m.add("inbound", 0, ramp(0, 0)) + m.add("inbound", 21, ramp(0, 1))
    frames += m.add("inbound", 83, ramp(0, 4)) + m.add("inbound", 99, ramp(0, 5)) + m.flush()
    assert joined(frames) == ramp(0, 0) + ramp(0, 1) + pkt(S, 40) + ramp(0, 4) + ramp(0, 5)
    assert m.lost_ms == 40


def test_reordered_jittered_packet_fills_its_hole_exactly() -> None:
    """A packet overtaken by the next one, both jittered, lands in its slot: no hole, no overlap."""
    m = Mixer(1, frame_ms=20, reorder_ms=60, max_gap_ms=1000)
    frames = m.add("inbound", 0, ramp(0, 0)) + m.add("inbound", 19, ramp(0, 1))
    frames += m.add("inbound", 62, ramp(0, 3)) + m.add("inbound", 41, ramp(0, 2))
    frames += m.add("inbound", 81, ramp(0, 4)) + m.flush()
    assert joined(frames) == b"".join(ramp(0, i) for i in range(5))
    assert (m.late_packets, m.duplicate_packets, m.lost_ms) == (0, 0, 0)


def test_jittered_duplicate_lands_once() -> None:
    """A repeat of the previous packet, stamped 2 ms off, overwrites its own slot."""
    m = Mixer(1, frame_ms=20, reorder_ms=20, max_gap_ms=1000)
    frames = m.add("inbound", 0, ramp(0, 0)) + m.add("inbound", 20, ramp(0, 1))
    frames += m.add("inbound", 22, ramp(0, 1)) + m.add("inbound", 40, ramp(0, 2)) + m.flush()
    assert joined(frames) == ramp(0, 0) + ramp(0, 1) + ramp(0, 2)
    assert m.duplicate_packets == 1


@pytest.mark.parametrize("ms_per_packet", [20.1, 19.9, 20.002])
def test_drifting_track_is_nudged_back_to_its_timestamps(ms_per_packet: float) -> None:
    """A track whose stamps drift up to 0.5 % from its bytes stays within 10 ms of them, one sample at a time."""
    rng = random.Random(1)
    n = 3000  # 60 s: uncorrected, 0.5 % is 300 ms of drift
    m = Mixer(2, frame_ms=100, reorder_ms=60, max_gap_ms=60_000)
    arrivals = []
    for i in range(n):
        jitter = rng.randint(-2, 2) if i else 0
        arrivals.append((round(ms_per_packet * i) + jitter, 0, i))
        arrivals.append((20 * i + (rng.randint(-2, 2) if i else 0), 1, i))
    frames: list[AudioFrame] = []
    for ts, tr, i in sorted(arrivals):
        frames += m.add(("inbound", "outbound")[tr], ts, ramp(tr, i))
    frames += m.flush()
    out = joined(frames)
    stamps = {(tr, i): ts for ts, tr, i in arrivals}
    for tr in (0, 1):
        # a nudge repeats or drops the first sample of a packet: look for the rest of each
        at = positions(out[tr::2], [ramp(tr, i)[1:] for i in range(n)])
        assert -1 not in at
        worst_ms = max(abs(at[i] - 1 - 8 * stamps[tr, i]) / 8 for i in range(n))
        assert worst_ms <= 10
        assert S not in out[tr::2][at[0] : at[-1]]  # never a hole
    assert m.jitter_corrections > 0
    assert (m.late_packets, m.duplicate_packets) == (0, 0)


def test_odd_jump_resynchronises_on_the_timestamp() -> None:
    """A jump more than 10 ms from a whole number of its packet's length lands at its timestamp exactly."""
    m = Mixer(1, frame_ms=20, reorder_ms=0, max_gap_ms=1000)
    frames = m.add("inbound", 0, pkt(1))
    frames += m.add("inbound", 50, pkt(2, 60))  # 30 ms later, a 60 ms packet
    frames += m.add("inbound", 110, pkt(3)) + m.flush()
    assert joined(frames) == pkt(1) + pkt(S, 30) + pkt(2, 60) + pkt(3)


@settings(max_examples=300, deadline=None)
@given(
    channels=st.sampled_from([1, 2]),
    frame_ms=st.sampled_from([20, 30, 100]),
    reorder_ms=st.sampled_from([0, 20, 60]),
    data=st.data(),
)
def test_jitter_loss_and_reordering_place_each_packet_in_its_slot(
    channels: int, frame_ms: int, reorder_ms: int, data: st.DataObject
) -> None:
    """Random jitter ≤ ±3 ms, loss, reordering, duplicates: each packet's bytes sit contiguously in its 20 ms slot unless late."""
    m = Mixer(channels, frame_ms=frame_ms, reorder_ms=reorder_ms, max_gap_ms=10_000)
    names = ("inbound", "outbound")
    sends = []
    for ch in range(channels):
        n = data.draw(st.integers(1, 40), label="packets")
        first = data.draw(st.integers(0, 10), label="first packet")
        for i in range(first, first + n):
            if data.draw(st.booleans(), label="lost") and data.draw(st.booleans()):
                continue
            jitter = data.draw(st.integers(-3, 3), label="jitter")
            delay = data.draw(st.sampled_from([0, 0, 0, 1, 2, 4]), label="delay (packets)")
            copies = 2 if data.draw(st.integers(0, 9), label="duplicate") == 0 else 1
            sends += [(i + delay, ch, i, 20 * i + 5 + jitter)] * copies
    sends.sort(key=lambda s: (s[0], s[1]))
    expected = [bytearray() for _ in range(channels)]
    anchor: list[int | None] = [None] * channels  # the byte offset the track's first packet set
    frames: list[AudioFrame] = []
    end_b = 0
    for _, ch, i, ts in sends:
        if anchor[ch] is None:
            anchor[ch] = 8 * ts - 160 * i
        emitted_b = len(joined(frames)) // channels
        frames += m.add(names[ch], ts, ramp(ch, i))
        start = 160 * i + anchor[ch]
        if start + 160 > emitted_b:  # bytes not in an emitted frame land in the packet's slot
            end_b = max(end_b, start + 160)
            buf = expected[ch]
            buf.extend(b"\xff" * (start + 160 - len(buf)))
            lo = max(start, emitted_b)
            buf[lo : start + 160] = ramp(ch, i)[lo - start :]
    frames += m.flush()
    assert m.jitter_corrections == 0  # jitter within ±3 ms keeps the average under 4 ms
    t = 0
    for f in frames:
        assert f.t_ms == t
        t += len(f.pcmu) // channels // 8
    out = joined(frames)
    assert len(out) == 8 * (-(-end_b // 8)) * channels
    for ch in range(channels):
        got = out[ch::channels]
        assert got == bytes(expected[ch]) + b"\xff" * (len(got) - len(expected[ch]))


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
def test_any_packet_sequence_gives_contiguous_frames(
    channels: int, frame_ms: int, reorder_ms: int, packets: list[tuple[int, int, int, int]]
) -> None:
    """Any packets, any lengths: frames contiguous from 0 and exactly as long as the call clock."""
    m = Mixer(channels, frame_ms=frame_ms, reorder_ms=reorder_ms, max_gap_ms=10_000)
    names = ("inbound", "outbound")
    frames: list[AudioFrame] = []
    for track, ts, length, value in packets:
        frames += m.add(names[track % channels], ts, bytes([value]) * length)
    frames += m.flush()
    t = 0
    for f in frames:
        assert f.t_ms == t
        assert len(f.pcmu) % channels == 0
        t += len(f.pcmu) // channels // 8
    assert len(joined(frames)) == 8 * m.end_ms * channels
    if packets:
        assert m.end_ms >= max(ts for _, ts, _, _ in packets) - 10
