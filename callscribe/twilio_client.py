"""A faithful Twilio Media Streams sender: plays a call's messages to a ``/twilio`` WebSocket.

The messages are :mod:`callscribe.twilio_messages`' (re-exported here); this module sends them
at Twilio's pace. The handshake can carry ``X-Twilio-Signature``
(https://www.twilio.com/docs/usage/webhooks/webhooks-security). Like Twilio, it can first ask
the voice webhook (``/twiml``) for the call's TwiML and stream with the ``<Parameter>``s it
names, which carry a secured ingest's one-time stream token (:func:`fetch_stream_parameters`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from callscribe.twilio_messages import (
    PACKET_BYTES,
    PACKET_MS,
    SILENCE,
    TRACK_NAMES,
    SimCall,
    build_messages,
    new_sid,
    twilio_messages,
)

__all__ = [
    "PACKET_BYTES",
    "PACKET_MS",
    "SILENCE",
    "TRACK_NAMES",
    "SimCall",
    "fetch_stream_parameters",
    "new_sid",
    "sign",
    "stream_call",
    "twilio_messages",
    "twiml_url",
]


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
    messages, counts = build_messages(call)
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
