"""Terminal rendering of one call's live transcript, shared by ``callscribe watch`` and ``demo``.

Two modes, chosen by whether the output is a terminal:

* TTY: finals are permanent lines, ``[mm:ss] caller  text`` with the speaker in colour (caller
  cyan on the left, callee yellow and indented); below them a *live area* holds each open
  segment's interim text and one progress line (call, elapsed time, finals so far). Every event
  erases the live area with ANSI escapes (cursor up ``ESC[nA``, erase below ``ESC[J``) and draws
  it again, so an interim is replaced in place by the next interim and finally by its final.
* Not a TTY (a pipe, a file, a test): only finals, one line each, ``[mm:ss] caller: text``,
  and one summary line when the call ends. Nothing else, so the output diffs and greps cleanly.

Times in ``[mm:ss]`` are the segment's start in call time (seconds from the start of the call).
ANSI escapes: ECMA-48 (https://ecma-international.org/publications-and-standards/standards/ecma-48/).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

from shared.schema import CallMeta, TranscriptEvent

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_COLOURS = {"caller": "\x1b[36m", "callee": "\x1b[33m"}
_INDENT = {"caller": "", "callee": "    "}
_ERASE_LINE = "\r\x1b[J"


def mmss(seconds: float) -> str:
    """``75.4`` → ``"01:15"``; negative times count as 0; hours roll into minutes (``"61:00"``)."""
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


class CallRenderer:
    """Renders the events of one call to ``out``; see the module docstring for the two modes.

    ``tty`` None means ``out.isatty()``. ``clock`` returns monotonic seconds (tests pass a fake).
    ``width`` (columns) bounds the live area on a TTY so wrapped lines never break the redraw;
    None means the terminal's width. Finals are counted once per segment: a replayed or repeated
    final of a segment already shown is ignored.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.clock = clock
        self.width = width
        self.call_sid: str | None = None
        self.finals = 0
        self.ended = False
        self._started = clock()
        self._interims: dict[tuple[int, int], TranscriptEvent] = {}
        self._final_segments: set[tuple[int, int]] = set()
        self._live_lines = 0
        self._last_end_s = 0.0

    # ------------------------------------------------------------------ events

    def note(self, text: str) -> None:
        """A status line (``waiting for a call…``): dimmed on a TTY, plain otherwise."""
        self._redraw([f"{_DIM}{text}{_RESET}" if self.tty else text])

    def start(self, call: CallMeta | str) -> None:
        """Begin rendering ``call`` (its metadata, or just its SID); prints one header line."""
        sid = call if isinstance(call, str) else call.call_sid
        self.call_sid = sid
        self._started = self.clock()
        channels = 2 if isinstance(call, str) else call.channels
        who = "caller and callee" if channels == 2 else "caller only"
        header = f"watching call {sid} ({who})"
        self._redraw([f"{_BOLD}{header}{_RESET}" if self.tty else header])

    def transcript(self, event: TranscriptEvent) -> bool:
        """Show one interim or final. Returns True when it was a new final (one more line)."""
        key = (event.channel, event.segment)
        self._last_end_s = max(self._last_end_s, event.end)
        if not event.is_final:
            if key in self._final_segments or not self.tty:
                return False
            self._interims[key] = event
            self._redraw([])
            return False
        self._interims.pop(key, None)
        if key in self._final_segments or not event.text.strip():
            if self.tty:
                self._redraw([])
            return False
        self._final_segments.add(key)
        self.finals += 1
        self._redraw([self._final_line(event)])
        return True

    def tick(self) -> None:
        """Refresh the progress line (elapsed time) on a TTY; nothing otherwise."""
        if self.tty and not self.ended:
            self._redraw([])

    def end(self) -> None:
        """The call is over: clear the live area and print the summary line."""
        if self.ended:
            return
        self.ended = True
        self._interims.clear()
        self._redraw([self._progress_text(state="ended")])

    def interrupt(self) -> None:
        """Watching stops before the call's end (Ctrl-C): on a TTY the live area (interims,
        progress) gives way to one permanent ``… stopped …`` line ending in a newline, so no
        interim is left looking like a final and the shell prompt starts on its own line."""
        if self.ended:
            return
        self.ended = True
        self._interims.clear()
        if self.tty:
            self._redraw([self._progress_text(state="stopped")] if self.call_sid else [])

    # ------------------------------------------------------------------ drawing

    def _final_line(self, event: TranscriptEvent) -> str:
        text = event.text.strip()
        if not self.tty:
            return f"[{mmss(event.start)}] {event.speaker}: {text}"
        colour = _COLOURS[event.speaker]
        indent = _INDENT[event.speaker]
        return (
            f"{indent}{_DIM}[{mmss(event.start)}]{_RESET} {colour}{event.speaker:<6}{_RESET} {text}"
        )

    def _progress_text(self, *, state: str = "live") -> str:
        elapsed = self.clock() - self._started
        sid = self.call_sid or "-"
        plural = "" if self.finals == 1 else "s"
        return f"call {sid} {state} · {mmss(elapsed)} elapsed · {self.finals} final{plural}"

    def _live_area(self) -> list[str]:
        cols = self.width or shutil.get_terminal_size((100, 24)).columns
        limit = max(20, cols - 1)
        lines = []
        for event in sorted(self._interims.values(), key=lambda e: (e.start, e.channel)):
            head = f"{_INDENT[event.speaker]}[{mmss(event.start)}] {event.speaker:<6} "
            text = event.text.strip()
            room = limit - len(head)
            if len(text) > room:
                text = "…" + text[-(room - 1) :]
            colour = _COLOURS[event.speaker]
            lines.append(f"{_DIM}{colour}{head}{text}{_RESET}")
        if self.call_sid is not None:
            lines.append(f"{_DIM}{self._progress_text()[:limit]}{_RESET}")
        return lines

    def _erase(self) -> str:
        if self._live_lines == 0:
            return ""
        up = f"\x1b[{self._live_lines - 1}A" if self._live_lines > 1 else ""
        self._live_lines = 0
        return _ERASE_LINE if not up else f"\r{up}\x1b[J"

    def _redraw(self, permanent: list[str]) -> None:
        if not self.tty:
            if permanent:
                self.out.write("".join(line + "\n" for line in permanent))
                self.out.flush()
            return
        parts = [self._erase()]
        parts.extend(line + "\n" for line in permanent)
        live = [] if self.ended else self._live_area()
        parts.append("\n".join(live))
        self._live_lines = len(live)
        self.out.write("".join(parts))
        self.out.flush()
