"""The fake Deepgram's load mode: results at a steady rate, and marker packets echoed at once.

Used by ``benchmarks/load.py`` through :class:`tests.fakes.deepgram.FakeDeepgram` (``load=``).

A *marker packet* is one 20 ms Twilio packet (160 mu-law bytes) of one track that carries
:data:`MAGIC`, then a marker number as 4 bytes big-endian, then the same 4 bytes inverted, then
silence. Ingest stores payload bytes as they come and the tutorial copies them, so the pattern
reaches the fake byte-exactly in one channel of the interleaved audio, wherever the audio was
re-chunked (a scanner keeps the tail of each channel between chunks).

Per channel, :class:`LoadRecogniser` answers like a recogniser that hears a word a second:

* an interim every ``interim_every_s`` of audio (when the client asked for
  ``interim_results=true``), its text growing by the word ``ok``;
* a final every ``final_every_s`` of audio (never empty: at least ``ok``), which clears the text;
* a marker found in the channel adds the word ``mk<number>`` and is answered *at once*: with an
  interim (the interim clock restarts), or without interim results with a final. The segment's
  later interims and its final repeat the word, as a real transcript keeps its words.

Times are seconds of the connection's audio, like Deepgram's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAGIC = bytes([0x00, 0x7F, 0x10, 0x6F, 0x20, 0x5F, 0x30, 0x4F, 0x40, 0x3F, 0x50, 0x2F])
"""Starts every marker: 12 bytes a silent or speaking track does not produce in a row."""

PACKET_BYTES = 160
"""A Twilio packet: 20 ms of 8 kHz mu-law."""

_PATTERN_BYTES = len(MAGIC) + 8
_SILENCE = b"\xff"

Result = tuple[int, float, float, list[tuple[str, float, float]], bool]
"""``(channel, start_s, end_s, [(word, start_s, end_s)], is_final)``."""


def marker_packet(number: int) -> bytes:
    """The 160-byte mu-law payload carrying marker ``number`` (0 ≤ number < 2**32)."""
    code = struct.pack(">I", number)
    body = MAGIC + code + bytes(b ^ 0xFF for b in code)
    return body + _SILENCE * (PACKET_BYTES - len(body))


class MarkerScanner:
    """Finds marker numbers in one channel's mu-law bytes fed in any chunking."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[int]:
        """Markers whose pattern ends in ``data`` (patterns split across feeds are found)."""
        buf = self._tail + data
        found: list[int] = []
        at = buf.find(MAGIC)
        while at >= 0 and at + _PATTERN_BYTES <= len(buf):
            code = buf[at + len(MAGIC) : at + len(MAGIC) + 4]
            check = buf[at + len(MAGIC) + 4 : at + _PATTERN_BYTES]
            if bytes(b ^ 0xFF for b in code) == check:
                found.append(struct.unpack(">I", code)[0])
            at = buf.find(MAGIC, at + 1)
        # keep what could still start a pattern completed by the next chunk
        keep = len(buf) - at if at >= 0 else _PATTERN_BYTES - 1
        self._tail = buf[-min(keep, len(buf)) :] if keep > 0 else b""
        return found


@dataclass(frozen=True)
class LoadScript:
    """The load mode's cadence, s of audio per channel."""

    interim_every_s: float = 1.0
    final_every_s: float = 3.0


@dataclass
class _Channel:
    scanner: MarkerScanner = field(default_factory=MarkerScanner)
    words: list[tuple[str, float, float]] = field(default_factory=list)
    last_result_s: float = 0.0
    last_final_s: float = 0.0


class LoadRecogniser:
    """One connection's results in load mode.

    Args:
        script: the cadence.
        channels: interleaved channels of the audio (1 or 2).
        interim: whether the client asked for interim results.

    Attributes ``finals``, ``interims`` (results produced) and ``markers`` (numbers found, in
    order) are the connection's statistics.
    """

    def __init__(self, script: LoadScript, channels: int, *, interim: bool) -> None:
        self.script = script
        self.channels = max(channels, 1)
        self.interim = interim
        self.total_bytes = 0
        self.finals = 0
        self.interims = 0
        self.markers: list[int] = []
        self._lanes = [_Channel() for _ in range(self.channels)]

    @property
    def pos_s(self) -> float:
        """Audio received per channel, s."""
        return self.total_bytes / (8000 * self.channels)

    def audio(self, data: bytes) -> list[Result]:
        """Take one binary frame of interleaved audio; the results now due."""
        phase = self.total_bytes % self.channels
        self.total_bytes += len(data)
        pos = self.pos_s
        out: list[Result] = []
        for ch, lane in enumerate(self._lanes):
            found = lane.scanner.feed(data[(ch - phase) % self.channels :: self.channels])
            for number in found:
                self.markers.append(number)
                lane.words.append((f"mk{number}", max(pos - 0.02, 0.0), pos))
            if pos - lane.last_final_s >= self.script.final_every_s or (found and not self.interim):
                out.append(self._final(ch, lane, pos))
            elif found or (
                self.interim and pos - lane.last_result_s >= self.script.interim_every_s
            ):
                if not found:
                    lane.words.append(("ok", max(pos - 0.3, 0.0), pos))
                lane.last_result_s = pos
                self.interims += 1
                out.append((ch, lane.last_final_s, pos, list(lane.words), False))
        return out

    def flush(self) -> list[Result]:
        """The finals of every channel that has words not yet final (the stream is closing)."""
        return [
            self._final(ch, lane, self.pos_s) for ch, lane in enumerate(self._lanes) if lane.words
        ]

    def _final(self, ch: int, lane: _Channel, pos: float) -> Result:
        if not lane.words:
            lane.words.append(("ok", max(pos - 0.3, 0.0), pos))
        result = (ch, lane.last_final_s, pos, lane.words, True)
        lane.words = []
        lane.last_final_s = lane.last_result_s = pos
        self.finals += 1
        return result
