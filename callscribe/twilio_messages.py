"""The messages Twilio Media Streams sends for a call, built ahead of time.

The same shapes and order as Twilio's
(https://www.twilio.com/docs/voice/media-streams/websocket-messages): ``connected``, ``start``
(``sequenceNumber`` "1", ``mediaFormat`` audio/x-mulaw 8000 Hz 1 channel), one ``media`` per
20 ms packet (160 bytes) per track with every numeric field as a string and ``chunk`` counting
per track from 1, then ``stop``. Packets can be dropped (``loss``, ``drop_packets``) and the
outbound track can start late (``outbound_delay_ms``), as on a real call.
:mod:`callscribe.twilio_client` sends them; the load generator and the tests replay them.
"""

from __future__ import annotations

import base64
import json
import math
import random
import secrets
from dataclasses import dataclass, field

PACKET_MS = 20
"""Twilio sends 20 ms per media message."""

PACKET_BYTES = 160
"""Bytes of mu-law in one 20 ms packet (8 kHz, 1 byte per sample)."""

SILENCE = 0xFF
TRACK_NAMES = ("inbound", "outbound")


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: ``prefix`` + 32 hex digits (``CA…`` call, ``MZ…`` stream, ``AC…``)."""
    return prefix + secrets.token_hex(16)


@dataclass
class SimCall:
    """One simulated call.

    Attributes:
        tracks: mu-law 8 kHz bytes per track: ``[inbound]`` or ``[inbound, outbound]``. A
            track whose length is not a multiple of 160 bytes is padded with silence (0xFF):
            Twilio always sends whole 20 ms packets.
        call_sid, stream_sid, account_sid: ``CA``/``MZ``/``AC`` + 32 hex digits (random).
        custom_parameters: the stream's ``<Parameter>``s (``start.customParameters``).
        loss: fraction of media packets not sent, chosen with ``random.Random(seed)``.
        seed: makes ``loss`` deterministic.
        drop_packets: ``(track, chunk)`` pairs not sent (chunk numbers from 1, per track).
        outbound_delay_ms: the outbound track starts late: packets before this time are not
            sent and its first timestamp is the first multiple of 20 ms at or after it.
    """

    tracks: list[bytes]
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    custom_parameters: dict[str, str] = field(default_factory=dict)
    loss: float = 0.0
    seed: int = 0
    drop_packets: frozenset[tuple[str, int]] = frozenset()
    outbound_delay_ms: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.tracks) <= 2:
            raise ValueError("a call has one or two tracks")
        if not 0.0 <= self.loss <= 1.0 or self.outbound_delay_ms < 0:
            raise ValueError("loss must be in [0, 1] and outbound_delay_ms >= 0")

    @property
    def track_names(self) -> list[str]:
        """``["inbound"]`` or ``["inbound", "outbound"]``."""
        return list(TRACK_NAMES[: len(self.tracks)])

    def padded(self, index: int) -> bytes:
        """Track ``index`` padded with silence to whole 20 ms packets (what is sent, unless dropped)."""
        data = self.tracks[index]
        return data + bytes([SILENCE]) * (-len(data) % PACKET_BYTES)


def packets(call: SimCall, rng: random.Random) -> list[tuple[int, int, str, int, bytes, bool]]:
    """Every packet as (timestamp ms, track index, track, chunk, payload, dropped), by time."""
    out = []
    for index, name in enumerate(call.track_names):
        data = call.padded(index)
        first = 0
        if name == "outbound" and call.outbound_delay_ms:
            first = math.ceil(call.outbound_delay_ms / PACKET_MS)
        for chunk, k in enumerate(range(first, len(data) // PACKET_BYTES), start=1):
            dropped = (name, chunk) in call.drop_packets
            if call.loss and rng.random() < call.loss:
                dropped = True
            payload = data[k * PACKET_BYTES : (k + 1) * PACKET_BYTES]
            out.append((k * PACKET_MS, index, name, chunk, payload, dropped))
    out.sort(key=lambda p: (p[0], p[1]))
    return out


def twilio_messages(call: SimCall) -> list[tuple[float, str]]:
    """The messages Twilio would send for ``call``: ``(send time in s from stream start, JSON)``.

    Dropped packets are left out (their ``chunk`` numbers are skipped); ``sequenceNumber``
    counts the messages actually sent, from 1 at ``start``.
    """
    messages, _ = build_messages(call)
    return messages


def build_messages(call: SimCall) -> tuple[list[tuple[float, str]], dict[str, int]]:
    """:func:`twilio_messages` and the counts ``{"sent_packets", "dropped_packets", "end_ms"}``."""
    rng = random.Random(call.seed)
    seq = 1
    msgs: list[tuple[float, str]] = [
        (0.0, json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})),
        (
            0.0,
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": str(seq),
                    "start": {
                        "accountSid": call.account_sid,
                        "streamSid": call.stream_sid,
                        "callSid": call.call_sid,
                        "tracks": call.track_names,
                        "customParameters": dict(call.custom_parameters),
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                    "streamSid": call.stream_sid,
                }
            ),
        ),
    ]
    sent = dropped = 0
    end_ms = 0
    for ts, _index, name, chunk, payload, lost in packets(call, rng):
        end_ms = max(end_ms, ts + PACKET_MS)
        if lost:
            dropped += 1
            continue
        seq += 1
        sent += 1
        media = {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": name,
                "chunk": str(chunk),
                "timestamp": str(ts),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": call.stream_sid,
        }
        # a packet leaves once its 20 ms of audio exist, as from a live call
        msgs.append(((ts + PACKET_MS) / 1000.0, json.dumps(media)))
    seq += 1
    stop = {
        "event": "stop",
        "sequenceNumber": str(seq),
        "stop": {"accountSid": call.account_sid, "callSid": call.call_sid},
        "streamSid": call.stream_sid,
    }
    msgs.append((end_ms / 1000.0, json.dumps(stop)))
    return msgs, {"sent_packets": sent, "dropped_packets": dropped, "end_ms": end_ms}
