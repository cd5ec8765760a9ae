"""A call's transcript as text, JSON, WebVTT or SRT (``GET /v1/calls/{sid}/transcript?format=``).

Pure functions of the call's metadata and its finals (``transcript`` events, in history order).
Speakers are ``caller`` (channel 0) and ``callee`` (channel 1); cue times are call-relative
(seconds from the start of the call, the player's timeline) and each cue's text, like each text
line, also carries its wall-clock time (``started_at`` + the final's ``start``, ISO 8601 UTC),
so a transcript can be matched with a recording and with the phone system's logs.

- ``txt``: a header (call, from, to, started), then ``[mm:ss] 09:30:05Z speaker: text`` lines;
- ``json``: ``{"call": CallSummary, "finals": [transcript events]}`` each final with ``wall``;
- ``vtt``: WebVTT (https://www.w3.org/TR/webvtt1/) with ``<v caller>`` voice spans and a NOTE;
- ``srt``: SubRip, numbered cues, ``hh:mm:ss,mmm``, ``caller: `` prefixes.
"""

from __future__ import annotations

import json

from shared.history import iso
from shared.schema import CallSummary, TranscriptEvent

FORMATS = {
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "vtt": "text/vtt; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
}
"""Export formats and their media types."""


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _mmss(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 60:02d}:{s % 60:02d}"


def _wall(call: CallSummary, offset_s: float) -> str:
    return iso(call.started_at + offset_s)


def _end(event: TranscriptEvent) -> float:
    return max(event.end, event.start + 0.001)


def to_txt(call: CallSummary, finals: list[TranscriptEvent]) -> str:
    """Plain text: a header, then one line per final."""
    lines = [
        f"call {call.call_sid}",
        f"from {call.from_ or '-'} to {call.to or '-'}"
        + (f" ({call.direction})" if call.direction else ""),
        f"started {call.started}" + (f", ended {call.ended}" if call.ended else ""),
    ]
    if call.failure:
        lines.append(f"incomplete: {call.failure}")
    lines.append("")
    for e in finals:
        wall = _wall(call, e.start)[11:19] + "Z"
        lines.append(f"[{_mmss(e.start)}] {wall} {e.speaker}: {e.text}")
    return "\n".join(lines) + "\n"


def to_json(call: CallSummary, finals: list[TranscriptEvent]) -> str:
    """JSON: the call's summary and its finals, each with its wall-clock start ``wall``."""
    body = {
        "call": call.model_dump(mode="json", by_alias=True),
        "finals": [{**e.model_dump(mode="json"), "wall": _wall(call, e.start)} for e in finals],
    }
    return json.dumps(body, ensure_ascii=False, indent=1)


def _cue_text(text: str) -> str:
    return text.replace("\n", " ").replace("-->", "->")


def to_vtt(call: CallSummary, finals: list[TranscriptEvent]) -> str:
    """WebVTT: one cue per final, ``<v speaker>`` voice spans, call-relative cue times."""
    out = [
        "WEBVTT",
        "",
        f"NOTE call {call.call_sid} from {call.from_ or '-'} to {call.to or '-'}, "
        f"started {call.started}; cue times are seconds from the start of the call",
        "",
    ]
    for e in finals:
        text = _cue_text(e.text).replace("<", "&lt;").replace(">", "&gt;")
        out += [
            f"{e.id or e.segment}",
            f"{_clock(e.start, '.')} --> {_clock(_end(e), '.')}",
            f"<v {e.speaker}>{text}</v> [{_wall(call, e.start)}]",
            "",
        ]
    return "\n".join(out)


def to_srt(call: CallSummary, finals: list[TranscriptEvent]) -> str:
    """SubRip: numbered cues from 1, ``speaker: text [wall clock]``."""
    out: list[str] = []
    for n, e in enumerate(finals, start=1):
        out += [
            str(n),
            f"{_clock(e.start, ',')} --> {_clock(_end(e), ',')}",
            f"{e.speaker}: {_cue_text(e.text)} [{_wall(call, e.start)}]",
            "",
        ]
    return "\n".join(out)


def render(fmt: str, call: CallSummary, finals: list[TranscriptEvent]) -> str:
    """The transcript in ``fmt`` (a key of :data:`FORMATS`).

    Raises:
        KeyError: an unknown format.
    """
    return {"txt": to_txt, "json": to_json, "vtt": to_vtt, "srt": to_srt}[fmt](call, finals)
