"""The voice webhook's TwiML and Twilio signature checks (webhook and WebSocket handshake)."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import InvalidStatus

from callscribe.twilio_client import SimCall, sign, stream_call
from services.ingest.twiml import MAX_WEBHOOK_BODY_BYTES
from shared import keys

from .conftest import WAIT_S, read_audio

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://example.ngrok.app"
FORM = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002", "Direction": "inbound"}


def parse(reply: httpx.Response) -> ET.Element:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/xml")
    return ET.fromstring(reply.text)


async def test_webhook_streams_both_tracks_with_parameters_and_dials(ingest) -> None:
    """POST /twiml starts a both_tracks stream to ws://HOST/twilio with From/To/Direction, then dials."""
    async with ingest(forward_to="+15559999") as port, httpx.AsyncClient(timeout=WAIT_S) as http:
        root = parse(await http.post(f"http://127.0.0.1:{port}/twiml", data=FORM))
    stream = root.find("./Start/Stream")
    assert stream is not None
    assert stream.get("url") == f"ws://127.0.0.1:{port}/twilio"
    assert stream.get("track") == "both_tracks"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    token = params.pop("StreamToken")  # one-time, for this CallSid (tests/security/)
    assert len(token) >= 32
    assert params == {"From": "+15550001", "To": "+15550002", "Direction": "inbound"}
    assert [el.tag for el in root] == ["Start", "Dial"]
    assert root.findtext("Dial") == "+15559999"


async def test_webhook_behind_proxy_derives_wss_url_and_holds_without_dial(ingest) -> None:
    """Without PUBLIC_URL the stream URL follows X-Forwarded-Proto/Host; no FORWARD_TO: no Dial,
    a Pause keeps the caller on the line (an empty rest would hang up at once)."""
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "abc.example.com"}
    async with ingest() as port, httpx.AsyncClient(timeout=WAIT_S) as http:
        root = parse(await http.get(f"http://127.0.0.1:{port}/twiml", headers=headers))
    stream = root.find("./Start/Stream")
    assert stream is not None and stream.get("url") == "wss://abc.example.com/twilio"
    assert root.find("Dial") is None
    assert [el.tag for el in root] == ["Start", "Pause"]
    assert int(root.find("Pause").get("length")) >= 600


@pytest.mark.parametrize(
    ("signature", "status"),
    [
        (sign(f"{PUBLIC}/twiml", FORM, TOKEN), 200),
        (None, 403),
        (sign(f"{PUBLIC}/twiml", FORM, "wrong-token"), 403),
        (sign(f"{PUBLIC}/twiml", {**FORM, "From": "+1999"}, TOKEN), 403),
    ],
    ids=["valid", "missing", "wrong-token", "tampered-params"],
)
async def test_webhook_signature_is_checked_against_public_url(
    ingest, signature: str | None, status: int
) -> None:
    """Behind a proxy a POST signed for PUBLIC_URL + path passes; missing or wrong gets 403."""
    headers = {"X-Twilio-Signature": signature} if signature else {}
    async with (
        ingest(twilio_auth_token=TOKEN, public_url=PUBLIC) as port,
        httpx.AsyncClient(timeout=WAIT_S) as http,
    ):
        reply = await http.post(f"http://127.0.0.1:{port}/twiml", data=FORM, headers=headers)
    assert reply.status_code == status
    if status == 200:
        stream = ET.fromstring(reply.text).find("./Start/Stream")
        assert stream is not None and stream.get("url") == "wss://example.ngrok.app/twilio"


async def test_webhook_get_signs_url_with_query_and_no_params(ingest) -> None:
    """A GET webhook is signed over the URL with its query string and no body parameters."""
    query = "From=%2B15550001&To=%2B15550002"
    async with (
        ingest(twilio_auth_token=TOKEN, public_url=PUBLIC) as port,
        httpx.AsyncClient(timeout=WAIT_S) as http,
    ):
        url = f"http://127.0.0.1:{port}/twiml?{query}"
        good = await http.get(
            url, headers={"X-Twilio-Signature": sign(f"{PUBLIC}/twiml?{query}", {}, TOKEN)}
        )
        bad = await http.get(
            url, headers={"X-Twilio-Signature": sign(f"{PUBLIC}/twiml", {}, TOKEN)}
        )
    assert good.status_code == 200 and bad.status_code == 403
    assert ET.fromstring(good.text).find("./Start/Stream/Parameter") is not None


async def test_websocket_handshake_signature_behind_proxy(ingest, redis: aioredis.Redis) -> None:
    """The stream handshake signed for wss://PUBLIC_HOST/twilio is accepted; others get 403."""
    call = SimCall(tracks=[b"\x01" * 800])
    async with ingest(twilio_auth_token=TOKEN, public_url=PUBLIC) as port:
        url = f"ws://127.0.0.1:{port}/twilio"
        for token, signature_url in [
            (None, None),
            ("wrong", "wss://example.ngrok.app/twilio"),
            (TOKEN, url),
        ]:
            with pytest.raises(InvalidStatus) as err:
                await stream_call(url, call, speed=0, auth_token=token, signature_url=signature_url)
            assert err.value.response.status_code == 403
        assert not await redis.exists(keys.meta(call.call_sid))
        await stream_call(
            url, call, speed=0, auth_token=TOKEN, signature_url="wss://example.ngrok.app/twilio"
        )
        frames = await read_audio(redis, call.call_sid)
    assert frames[-1].eof and b"".join(f.pcmu for f in frames) == b"\x01" * 800


async def test_websocket_handshake_signature_without_public_url(
    ingest, redis: aioredis.Redis
) -> None:
    """Without PUBLIC_URL the handshake is checked against the URL it reached us at."""
    call = SimCall(tracks=[b"\x02" * 800])
    async with ingest(twilio_auth_token=TOKEN) as port:
        url = f"ws://127.0.0.1:{port}/twilio"
        await stream_call(url, call, speed=0, auth_token=TOKEN)
        frames = await read_audio(redis, call.call_sid)
    assert frames[-1].eof and b"".join(f.pcmu for f in frames) == b"\x02" * 800


async def test_oversized_webhook_body_is_refused_before_it_is_all_read(ingest) -> None:
    """A POST body past MAX_WEBHOOK_BODY_BYTES gets 413 after reading about that much, not all.

    The client sends an endless chunked body, 4 KiB at a time, until the answer comes."""
    async with ingest() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /twiml HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"1000\r\n" + b"a" * 4096 + b"\r\n"
        sent = 0
        answer = asyncio.ensure_future(reader.readline())
        try:
            async with asyncio.timeout(WAIT_S):
                while not answer.done():
                    writer.write(chunk)
                    sent += 4096
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    await asyncio.wait({answer}, timeout=0.001)
                status = await answer
        finally:
            answer.cancel()
            writer.close()
    assert status.split()[1] == b"413"
    assert sent <= MAX_WEBHOOK_BODY_BYTES + 64 * 4096  # the socket buffers hold a few chunks
