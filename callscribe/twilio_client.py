"""A faithful Twilio Media Streams sender: plays mu-law tracks to a ``/twilio`` WebSocket.

It sends what Twilio sends, in the same shapes and order
(https://www.twilio.com/docs/voice/media-streams/websocket-messages): ``connected``, ``start``
(``sequenceNumber`` "1", ``mediaFormat`` audio/x-mulaw 8000 Hz 1 channel), one ``media`` per
20 ms packet (160 bytes) per track with every numeric field as a string and ``chunk`` counting
per track from 1, then ``stop``. Packets can be dropped (``loss``, ``drop_packets``) and the
outbound track can start late (``outbound_delay_ms``), as on a real call. The handshake can
carry ``X-Twilio-Signature`` (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
Like Twilio, it can first ask the voice webhook (``/twiml``) for the call's TwiML and stream
with the ``<Parameter>``s it names, which carry a secured ingest's one-time stream token
(:func:`fetch_stream_parameters`).

Over 300 lines, not split yet: the messages Twilio sends, their signing and the stream they form are
one protocol; the seam is the TwiML/token fetch, which can move out (issue 7).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

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


def _packets(call: SimCall, rng: random.Random) -> list[tuple[int, int, str, int, bytes, bool]]:
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
    messages, _ = _build(call)
    return messages


def _build(call: SimCall) -> tuple[list[tuple[float, str]], dict[str, int]]:
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
    for ts, _index, name, chunk, payload, lost in _packets(call, rng):
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


def sign(url: str, params: dict[str, str], auth_token: str) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``url`` and POST ``params``."""
    return str(RequestValidator(auth_token).compute_signature(url, params))


def twiml_url(stream_url: str) -> str:
    """The voice webhook beside a stream URL: ``ws://h:5000/twilio`` → ``http://h:5000/twiml``."""
    scheme, sep, rest = stream_url.partition("://")
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    host, _, path = rest.partition("/")
    prefix = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    return f"{scheme}{sep}{host}/{prefix}twiml"


async def fetch_stream_parameters(
    url: str,
    call: SimCall,
    *,
    auth_token: str | None = None,
    signature_url: str | None = None,
    timeout_s: float = 10.0,
) -> dict[str, str]:
    """POST the voice webhook at ``url`` as Twilio does for ``call`` (form parameters
    ``CallSid``, ``AccountSid``, ``From``, ``To``, ``Direction``; signed over ``signature_url
    or url`` when ``auth_token`` is given) and return the ``<Parameter>``s of its
    ``<Stream>`` (https://www.twilio.com/docs/voice/twiml/stream#custom-parameters).

    Raises:
        RuntimeError: the webhook did not answer 200 with a ``<Stream>``.
        aiohttp.ClientError, TimeoutError: it could not be reached within ``timeout_s``.
    """
    import xml.etree.ElementTree as ET

    import aiohttp

    form = {
        "CallSid": call.call_sid,
        "AccountSid": call.account_sid,
        "From": call.custom_parameters.get("From", "+15550100"),
        "To": call.custom_parameters.get("To", "+15550199"),
        "Direction": "inbound",
    }
    headers = {}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = sign(signature_url or url, form, auth_token)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=form, headers=headers) as reply,
    ):
        text = await reply.text()
        if reply.status != 200:
            raise RuntimeError(f"{url} answered {reply.status}: {text.strip()[:200]}")
    stream = ET.fromstring(text).find("./Start/Stream")
    if stream is None:
        raise RuntimeError(f"{url} answered TwiML without <Stream>")
    return {str(p.get("name")): str(p.get("value")) for p in stream.findall("Parameter")}


async def stream_call(
    url: str,
    call: SimCall,
    *,
    speed: float = 1.0,
    auth_token: str | None = None,
    signature_url: str | None = None,
    open_timeout_s: float = 10.0,
    webhook_url: str | None = None,
    webhook_signature_url: str | None = None,
    on_connected: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Send ``call`` to the Media Streams WebSocket at ``url``, paced like Twilio.

    With ``webhook_url``, first fetch the call's TwiML there (:func:`fetch_stream_parameters`,
    signed over ``webhook_signature_url`` when ``auth_token`` is given) and send the
    ``<Parameter>``s it names (the stream token among them) in ``start``.

    Args:
        url: e.g. ``ws://127.0.0.1:5000/twilio``.
        speed: 1.0 = real time, 2.0 = twice as fast, 0 or ``inf`` = as fast as possible.
        auth_token: sign the handshake (``X-Twilio-Signature`` over ``signature_url or url``
            with no parameters).
        open_timeout_s: handshake timeout, s.
        on_connected: called once the handshake succeeded, before the first message.

    Returns:
        ``{"sent_packets", "dropped_packets", "messages", "duration_s", "close_code",
        "t0_monotonic"}``; ``t0_monotonic`` is the ``time.monotonic()`` at which stream time 0
        was due: a packet with timestamp T ms is sent once its audio is complete, at
        ``t0 + (T + 20) / 1000 / speed``;
        ``close_code`` is the server's close code if it closed the socket before we finished,
        else ``None``.

    Raises:
        websockets.exceptions.InvalidStatus: the handshake was refused (e.g. 403).
        OSError, TimeoutError: the server could not be reached in ``open_timeout_s``.
    """
    if webhook_url is not None:
        given = await fetch_stream_parameters(
            webhook_url,
            call,
            auth_token=auth_token,
            signature_url=webhook_signature_url,
            timeout_s=open_timeout_s,
        )
        call = dataclasses.replace(call, custom_parameters={**call.custom_parameters, **given})
    messages, counts = _build(call)
    headers = {}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = sign(signature_url or url, {}, auth_token)
    fast = speed <= 0 or math.isinf(speed)
    close_code: int | None = None
    sent_messages = 0
    t0 = time.monotonic()
    started = time.monotonic()
    async with connect(
        url, additional_headers=headers, open_timeout=open_timeout_s, max_size=1 << 20
    ) as ws:
        if on_connected is not None:
            on_connected()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            for at_s, text in messages:
                if not fast:
                    delay_s = t0 + at_s / speed - loop.time()
                    if delay_s > 0:
                        await asyncio.sleep(delay_s)
                await ws.send(text)
                sent_messages += 1
        except ConnectionClosed as exc:
            close_code = exc.rcvd.code if exc.rcvd else 1006
    return {
        "sent_packets": counts["sent_packets"],
        "dropped_packets": counts["dropped_packets"],
        "messages": sent_messages,
        "duration_s": time.monotonic() - started,
        "close_code": close_code,
        "t0_monotonic": t0,
    }
