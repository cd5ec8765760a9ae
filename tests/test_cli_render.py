"""callscribe.render: the terminal rendering shared by ``watch`` and ``demo``, without sockets."""

from __future__ import annotations

import io

from callscribe.render import CallRenderer, mmss
from shared.schema import TranscriptEvent


def _event(
    segment: int, channel: int, text: str, *, final: bool, start: float = 1.0
) -> TranscriptEvent:
    return TranscriptEvent(
        call_sid="CA1",
        id="1-0" if final else None,
        segment=segment,
        channel=channel,
        speaker="caller" if channel == 0 else "callee",
        is_final=final,
        start=start,
        end=start + 1.0,
        text=text,
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_mmss() -> None:
    """Seconds render as zero-padded minutes:seconds, negatives as 00:00."""
    assert mmss(0) == "00:00"
    assert mmss(75.9) == "01:15"
    assert mmss(3600) == "60:00"
    assert mmss(-3) == "00:00"


def test_plain_output_prints_finals_only_one_line_each() -> None:
    """Without a TTY, interims are not shown and each final is one "[mm:ss] speaker: text" line."""
    out = io.StringIO()
    r = CallRenderer(out, tty=False, clock=_Clock())
    r.start("CA1")
    r.transcript(_event(0, 0, "hi kar", final=False, start=6.2))
    assert r.transcript(_event(0, 0, "Hi Karen.", final=True, start=6.2))
    r.transcript(_event(1, 1, "Sure.", final=True, start=71.0))
    r.end()
    lines = out.getvalue().splitlines()
    assert lines == [
        "watching call CA1 (caller and callee)",
        "[00:06] caller: Hi Karen.",
        "[01:11] callee: Sure.",
        "call CA1 ended · 00:00 elapsed · 2 finals",
    ]
    assert "\x1b" not in out.getvalue()


def test_duplicate_and_empty_finals_are_not_shown_twice() -> None:
    """A final repeated for the same segment (a replay overlap) or with empty text adds no line."""
    out = io.StringIO()
    r = CallRenderer(out, tty=False)
    r.start("CA1")
    assert r.transcript(_event(3, 1, "Great.", final=True))
    assert not r.transcript(_event(3, 1, "Great.", final=True))
    assert not r.transcript(_event(4, 1, "  ", final=True))
    assert r.finals == 1
    assert out.getvalue().count("Great.") == 1


def test_tty_replaces_interim_in_place_with_final() -> None:
    """On a TTY the interim is drawn in the live area, then erased and replaced by its final."""
    out = io.StringIO()
    clock = _Clock()
    r = CallRenderer(out, tty=True, clock=clock, width=80)
    r.start("CA1")
    r.transcript(_event(0, 1, "good mor", final=False))
    drawn = out.getvalue()
    assert "good mor" in drawn and "1 final" not in drawn and "0 finals" in drawn
    out.truncate(0)
    out.seek(0)
    clock.now += 12
    r.transcript(_event(0, 1, "Good morning.", final=True))
    redraw = out.getvalue()
    # the live area (interim + progress = 2 lines) is erased: up one line, erase below
    assert redraw.startswith("\r\x1b[1A\x1b[J")
    assert "good mor" not in redraw
    assert "Good morning." in redraw and "\x1b[33m" in redraw  # callee colour
    assert "00:12 elapsed · 1 final" in redraw


def test_tty_live_area_is_bounded_by_width() -> None:
    """A long interim is cut to the terminal width so the live-area redraw stays exact."""
    out = io.StringIO()
    r = CallRenderer(out, tty=True, width=40)
    r.start("CA1")
    out.truncate(0)
    out.seek(0)
    r.transcript(_event(0, 0, "word " * 50, final=False))
    lines = out.getvalue().split("\n")
    assert len(lines) == 2  # interim + progress, each cut to fit
    for line in lines:
        visible = line
        for code in ("\x1b[0m", "\x1b[2m", "\x1b[36m", "\x1b[33m", "\r", "\x1b[J"):
            visible = visible.replace(code, "")
        assert len(visible) <= 39


def test_tty_interrupt_replaces_live_area_with_a_stopped_line() -> None:
    """Ctrl-C mid-call: the interim and progress are erased for one "stopped" line ending in a newline."""
    out = io.StringIO()
    r = CallRenderer(out, tty=True, clock=_Clock(), width=80)
    r.start("CA1")
    r.transcript(_event(0, 0, "thank you so mu", final=False))
    out.truncate(0)
    out.seek(0)
    r.interrupt()
    redraw = out.getvalue()
    assert redraw.startswith("\r\x1b[1A\x1b[J")  # interim + progress erased
    assert "thank you" not in redraw
    assert redraw.endswith("call CA1 stopped · 00:00 elapsed · 0 finals\n")
    r.tick()
    r.interrupt()
    assert out.getvalue() == redraw  # nothing more once stopped
