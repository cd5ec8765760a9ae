"""The load generator's calls: K Twilio Media Streams at real-time pace from one asyncio loop.

Each call sends what :mod:`callscribe.twilio_client` sends (``connected``, ``start``, one
``media`` per 20 ms packet per track, ``stop``), byte for byte the same JSON (a test compares
them), but built from a per-call template and a prebuilt base64 payload, and sent by one
ticker: every 20 ms it writes, for every live call, all packets whose 20 ms of audio exist, as
one ``write`` per call. The audio is silence (0xFF) except *marker packets*
(:func:`tests.fakes.load_recogniser.marker_packet`): every ``marker_every_s`` a packet of one
track, alternating inbound and outbound, from 1 s into the call until 0.5 s before its end,
each shifted by 0 to 19 packets so that markers fall at every position of a 100 ms frame
and of the tutorial's 400 ms buffer
(the tutorial never sends its last < 400 ms to Deepgram). Marker numbers are
``call index × MARKER_STRIDE + k``, so a marker names its call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.loadgen.wire import HandshakeError, RawWebSocket, text_frame
from callscribe.twilio_messages import TRACK_NAMES, new_sid
from tests.fakes.load_recogniser import PACKET_BYTES, marker_packet

PACKET_S = 0.02
"""Twilio sends one packet per track per 20 ms."""

SHIFTS = 20
"""A marker is shifted by 0..SHIFTS-1 packets from its nominal time (400 ms: every phase)."""

MARKER_STRIDE = 100_000
"""Marker numbers of call ``i`` are ``i * MARKER_STRIDE + k``."""

_SILENT_B64 = base64.b64encode(b"\xff" * PACKET_BYTES).decode()
_MEDIA = (
    '{"event": "media", "sequenceNumber": "%d", "media": {"track": "%s", "chunk": "%d", '
    '"timestamp": "%d", "payload": "%s"}, "streamSid": "%s"}'
)
TRACKS = TRACK_NAMES


@dataclass
class LoadCall:
    """One call of the load.

    Attributes:
        index: 0-based call number (start order).
        start_at_s: when its socket opens, s after the load starts.
        packets: 20 ms packets per track (duration × 50).
        markers: packet index → (track index, marker number).
        t0: loop time at which stream time 0 was due (set once ``start`` is sent).
        marker_sent: marker number → loop time it was written.
    """

    index: int
    start_at_s: float
    packets: int
    markers: dict[int, tuple[int, int]]
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    t0: float | None = None
    t0_wall: float | None = None  # wall clock (time.time) when ``start`` was sent, s
    ended_at: float | None = None
    marker_sent: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    _next: int = 0
    _seq: int = 1

    def opening(self) -> bytes:
        """The ``connected`` and ``start`` frames."""
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": list(TRACKS),
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }
        return text_frame(json.dumps(connected)) + text_frame(json.dumps(start))

    def due(self, now: float) -> tuple[bytes, list[int], bool]:
        """Frames of every packet whose audio exists at loop time ``now`` (and ``stop`` after the last).

        Returns ``(frames, marker numbers in them, finished)``.
        """
        assert self.t0 is not None
        upto = min(int((now - self.t0) / PACKET_S + 1e-9), self.packets)
        out: list[bytes] = []
        marks: list[int] = []
        while self._next < upto:
            j = self._next
            mark = self.markers.get(j)
            for track_no, track in enumerate(TRACKS):
                payload = _SILENT_B64
                if mark is not None and mark[0] == track_no:
                    payload = base64.b64encode(marker_packet(mark[1])).decode()
                    marks.append(mark[1])
                self._seq += 1
                text = _MEDIA % (self._seq, track, j + 1, j * 20, payload, self.stream_sid)
                out.append(text_frame(text))
            self._next += 1
        finished = self._next >= self.packets
        if finished:
            self._seq += 1
            stop = {
                "event": "stop",
                "sequenceNumber": str(self._seq),
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
            out.append(text_frame(json.dumps(stop)))
        return b"".join(out), marks, finished


def plan_calls(
    calls: int, ramp_s: float, duration_s: float, marker_every_s: float
) -> list[LoadCall]:
    """``calls`` calls started evenly over ``ramp_s`` (call i at ``i * ramp_s / calls``).

    Raises:
        ValueError: ``marker_every_s`` < 0.4 (markers 0-19 packets apart could collide).
    """
    if marker_every_s < SHIFTS * PACKET_S:
        raise ValueError(f"marker_every_s must be >= {SHIFTS * PACKET_S} s")
    packets = round(duration_s / PACKET_S)
    first, last = round(1.0 / PACKET_S), packets - round(0.5 / PACKET_S)
    step = max(round(marker_every_s / PACKET_S), 1)
    out = []
    for i in range(calls):
        # shift each marker by 0-19 packets so that markers sample every position of callscribe's
        # 100 ms frames and of the tutorial's 400 ms buffers alike
        starts = range(first, last - SHIFTS + 1, step)
        markers = {
            j + (7 * i + 3 * k) % SHIFTS: (k % 2, i * MARKER_STRIDE + k)
            for k, j in enumerate(starts)
        }
        out.append(LoadCall(i, i * ramp_s / max(calls, 1), packets, markers))
    return out


async def play(
    host: str,
    port: int,
    calls: list[LoadCall],
    on_start: Callable[[LoadCall], None],
    *,
    open_timeout_s: float = 10.0,
) -> list[float]:
    """Play ``calls`` to ``ws://host:port/twilio``; ``on_start(call)`` right after its ``start``.

    Returns when every call has sent ``stop`` and closed (or failed: ``call.error``), with how
    late each 20 ms tick ran, ms (the generator's own lag: it should stay near 0).
    """
    loop = asyncio.get_running_loop()
    begin = loop.time()
    live: dict[int, tuple[LoadCall, RawWebSocket]] = {}
    closing: set[asyncio.Task[None]] = set()

    async def opener(call: LoadCall) -> None:
        await asyncio.sleep(max(begin + call.start_at_s - loop.time(), 0))
        try:
            ws = await RawWebSocket.open(host, port, "/twilio", timeout_s=open_timeout_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, HandshakeError) as exc:
            call.error = f"open: {exc!r}"
            return
        ws.write(call.opening())
        call.t0 = loop.time()
        call.t0_wall = time.time()
        live[call.index] = (call, ws)
        on_start(call)

    async with asyncio.TaskGroup() as tg:
        openers = [tg.create_task(opener(c)) for c in calls]
        tick = loop.time()
        late_ms: list[float] = []
        while live or not all(t.done() for t in openers):
            now = loop.time()
            late_ms.append((now - tick) * 1000)
            for index, (call, ws) in list(live.items()):
                data, marks, finished = call.due(now)
                if data:
                    ws.write(data)
                for number in marks:
                    call.marker_sent[number] = now
                if finished:
                    del live[index]
                    call.ended_at = now
                    task = tg.create_task(ws.close(timeout_s=10.0))
                    closing.add(task)
                    task.add_done_callback(closing.discard)
            tick += PACKET_S
            await asyncio.sleep(max(tick - loop.time(), 0))
    return late_ms
