"""The pure checkpoint core: which results are new, where a takeover resumes, and its encoding."""

from __future__ import annotations

import pytest

from services.transcriber.checkpoint import Checkpoint, FinalEnds, words_after
from shared.schema import TranscriptEvent, Word

SID = "CA00000000000000000000000000000078"


def result(
    channel: int, start: float, end: float, words: list[tuple[str, float, float]], segment: int = 0
) -> TranscriptEvent:
    """A final of ``channel`` with ``words`` as ``(word, start, end)`` (call time, s)."""
    return TranscriptEvent(
        call_sid=SID,
        segment=segment,
        channel=channel,
        speaker="caller" if channel == 0 else "callee",
        is_final=True,
        start=start,
        end=end,
        text=" ".join(w for w, _, _ in words),
        words=[Word(word=w, start=s, end=e) for w, s, e in words],
    )


def test_final_ends_drop_results_ending_within_the_slack_and_unknown_channels() -> None:
    """A result ending up to 2 ms after the channel's last final is old; a channel the call
    does not have is never admitted; a final end never moves back."""
    ends = FinalEnds([5.0, 3.0])
    assert ends.done(0, 5.002) and not ends.done(0, 5.003)
    assert ends.done(2, 100.0) and ends.done(-1, 100.0)
    ends.advance(1, 2.0)
    assert ends.ends == [5.0, 3.0] and ends.covered_s == 3.0


def test_words_after_keeps_words_whose_middle_is_past_the_final() -> None:
    """A straddling result keeps only its new words; its text and start follow them."""
    event = result(0, 10.0, 14.0, [("said", 10.0, 11.0), ("edge", 11.8, 12.4), ("new", 13, 14)])
    trimmed = words_after(event, 12.0)
    assert trimmed is not None
    assert [w.word for w in trimmed.words] == ["edge", "new"]
    assert trimmed.text == "edge new" and trimmed.start == 12.0 and trimmed.end == 14.0
    assert words_after(event, 9.0) is event
    assert words_after(event, 14.0) is None


def test_admit_drops_old_results_and_trims_straddling_ones() -> None:
    """Old results are dropped, straddling ones trimmed, the other channel is untouched."""
    cp = Checkpoint(2, final_end_s=[6.0, 1.0])
    assert cp.admit(result(0, 4.0, 6.0, [("old", 4.0, 5.0)])) is None
    straddling = cp.admit(result(0, 4.0, 8.0, [("old", 4.0, 5.0), ("new", 7.0, 8.0)]))
    assert straddling is not None and straddling.text == "new"
    fresh = result(1, 4.0, 8.0, [("other", 4.0, 5.0)])
    assert cp.admit(fresh) is fresh
    empty = result(0, 4.0, 9.0, [])  # an empty final in silence passes untouched
    assert cp.admit(empty) is empty


def test_advance_moves_the_resume_point_past_frames_every_channel_covers() -> None:
    """The resume point is the last frame both channels' finals cover, and the segment counter
    moves past every final's segment."""
    cp = Checkpoint(2)
    for i in range(5):  # 100 ms frames, entries 100-1 .. 500-1, ending at 100 .. 500 ms
        cp.sent(f"{(i + 1) * 100}-1", (i + 1) * 100.0)
    assert cp.sent_ms == 500.0
    cp.advance(result(0, 0.0, 0.45, [], segment=4))
    assert cp.resume_id == "0-0"  # channel 1 covers nothing yet
    cp.advance(result(1, 0.0, 0.3, [], segment=2))
    assert cp.resume_id == "300-1" and cp.next_segment == 5
    cp.advance(result(1, 0.3, 0.6, [], segment=3))
    assert cp.resume_id == "400-1" and cp.next_segment == 5


def test_meta_round_trip_and_bad_fields() -> None:
    """What a final's transaction writes is what a worker taking over reads; a field that is not
    a number is a ValueError; no fields is a new checkpoint."""
    cp = Checkpoint(2, "1200-1", 7, [1.25, 0.5])
    fields = cp.to_meta()
    assert fields == {
        "resume_audio_id": "1200-1",
        "next_segment": "7",
        "final_end_s_0": "1.250",
        "final_end_s_1": "0.500",
    }
    back = Checkpoint.from_meta(fields, 2)
    assert back.to_meta() == fields
    assert Checkpoint.from_meta({}, 1).to_meta() == {
        "resume_audio_id": "0-0",
        "next_segment": "0",
        "final_end_s_0": "0.000",
    }
    with pytest.raises(ValueError):
        Checkpoint.from_meta({**fields, "next_segment": "seven"}, 2)


def test_saved_tracks_how_far_the_checkpoint_moved_since_the_last_write() -> None:
    """Progress through silence is written only once it moved far enough."""
    cp = Checkpoint(1)
    cp.advance(result(0, 0.0, 2.0, []))
    assert cp.unsaved_s() == 2.0
    cp.saved()
    cp.advance(result(0, 2.0, 6.5, []))
    assert cp.unsaved_s() == 4.5
