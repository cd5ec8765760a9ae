"""Issue 8, "fake calls deny service" and "other limits": everything a stranger controls is bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callscribe.twilio_messages import SimCall, twilio_messages
from services.gateway.outbox import Outbox
from services.ingest.publisher import Publisher
from shared import keys
from shared.errors import TwilioMessageError
from shared.logs import LogfmtFormatter
from shared.schema import AudioFrame, parse_twilio
from tests.gateway.conftest import WAIT_S, FakeTranscriber, recv_json
from tests.ingest.conftest import read_audio
from tests.security.conftest import token


def _media(call: SimCall, ts_ms: int, seq: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": "inbound",
                "chunk": str(seq),
                "timestamp": str(ts_ms),
                "payload": base64.b64encode(b"\x55" * 160).decode(),
            },
            "streamSid": call.stream_sid,
        }
    )


async def test_timestamp_jumps_cannot_amplify_audio(ingest, redis: aioredis.Redis) -> None:
    """A packet jumping 60 s ahead is refused; jumps of 4.9 s spend the call's silence budget
    and the call is then ended (1008). Audio in Redis stays within budget + what was sent
    (before: 22.5 KB sent became 37.6 MB, ×1,670)."""
    call = SimCall(tracks=[b"\x55" * 1600])
    head = [t for _, t in twilio_messages(call)][:2]  # connected, start
    sent = 0
    async with ingest() as port, connect(f"ws://127.0.0.1:{port}/twilio") as ws:
        for text in head:
            await ws.send(text)
        packets = [_media(call, 0, 2), _media(call, 60_000, 3)]
        packets += [_media(call, 4_900 * k, 3 + k) for k in range(1, 150)]
        with pytest.raises(ConnectionClosed):
            for text in packets:
                await ws.send(text)
                sent += len(text)
            async with asyncio.timeout(WAIT_S):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1008, "silence_limit")
    frames = await read_audio(redis, call.call_sid)
    written = sum(len(f.pcmu) for f in frames)
    assert frames[-1].eof and frames[-1].t_ms <= 10_000 + 20 * len(packets)
    assert written <= 8 * (10_000 + 20 * len(packets))  # ≤ 10 s budget + 20 ms per packet
    print(f"sent {sent} B, written {written} B, x{written / sent:.1f}")


def test_one_call_cannot_push_out_anothers_frames() -> None:
    """With Redis behind, a flooding call is held to its fair share of the write buffer; the
    real call beside it loses no frame (before: it lost 10 while 99,975 were dropped)."""
    pub = Publisher(aioredis.Redis(), buffer_frames=1000, audio_maxlen=100, retention_s=60)
    frame = AudioFrame(t_ms=0, pcmu=b"\xff" * 800)
    victim_dropped = 0
    for i in range(100_000):
        pub.submit_frame("CAflood", frame)
        if i % 1000 == 0 and not pub.submit_frame("CAreal", frame):
            victim_dropped += 1
    assert victim_dropped == 0
    assert pub.dropped_for("CAflood") > 98_000
    assert pub.buffered_frames <= 1000


def test_client_queue_is_bounded_in_bytes() -> None:
    """A client that never reads holds at most CLIENT_QUEUE_MAX_BYTES of queued text, then is
    closed 1013 (before: 237 MiB per client with 1 MB call lists)."""
    outbox = Outbox(256, 1 << 20)
    big = json.dumps({"type": "calls", "calls": ["x" * 100_000]})
    queued = 0
    while outbox.put(big):
        queued += len(big)
    assert queued <= 1 << 20
    assert outbox.closing is not None and outbox.closing.code == 1013


async def test_fields_a_stranger_sets_are_capped(ingest, redis: aioredis.Redis) -> None:
    """A start with a 1 MB custom parameter, 1,000 parameters or a 100 KB streamSid makes no
    call (before: GET /v1/calls returned 1 MB); the sizes are in shared/schema.py."""
    base = SimCall(tracks=[b"\x55" * 160])
    start = json.loads(twilio_messages(base)[1][1])
    variants = []
    for change in (
        {"customParameters": {"Note": "x" * 1_000_000}},
        {"customParameters": {f"k{i}": "v" for i in range(1000)}},
        {"streamSid": "MZ" + "0" * 100_000},
        {"accountSid": "AC" + "0" * 100_000},
    ):
        variants.append(json.dumps({**start, "start": {**start["start"], **change}}))
    for raw in variants:
        with pytest.raises(TwilioMessageError) as err:
            parse_twilio(raw)
        assert err.value.code == "bad_message"
    async with ingest() as port, connect(f"ws://127.0.0.1:{port}/twilio", max_size=None) as ws:
        for raw in variants:
            await ws.send(raw)
    assert not await redis.exists(keys.meta(base.call_sid))


def test_media_dtmf_and_mark_fields_are_capped() -> None:
    """A media payload longer than 8 KB of mu-law in base64 (Twilio sends 160 bytes per 20 ms
    packet), a DTMF digit of 9 characters and a mark name of 257 are ``bad_message``; the largest
    allowed of each parses (the caps are in shared/schema.py)."""
    media = {"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "chunk": 1,
             "timestamp": 20, "payload": "/" * 10_668}}  # fmt: skip
    dtmf = {"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "1" * 8}}
    mark = {"event": "mark", "streamSid": "MZ1", "mark": {"name": "m" * 256}}
    for ok, field, grow in ((media, "media", "payload"), (dtmf, "dtmf", "digit"),
                            (mark, "mark", "name")):  # fmt: skip
        parse_twilio(json.dumps(ok))
        too_long = {**ok, field: {**ok[field], grow: ok[field][grow] + "/"}}
        with pytest.raises(TwilioMessageError) as err:
            parse_twilio(json.dumps(too_long))
        assert err.value.code == "bad_message", field


def test_event_that_is_a_list_is_refused_not_a_type_error() -> None:
    """``{"event": [...]}`` is ``unknown_event`` (before: an unhandled TypeError dropped the socket)."""
    for raw in ('{"event": [1, 2]}', '{"event": {"a": 1}}', '{"event": null}'):
        with pytest.raises(TwilioMessageError) as err:
            parse_twilio(raw)
        assert err.value.code == "unknown_event"


def test_log_values_cannot_forge_lines_or_drive_terminals() -> None:
    """``\\r``, ``\\n``, ESC and other control characters in a value are escaped."""
    record = logging.makeLogRecord(
        {"msg": "bad twilio message", "levelname": "WARNING", "name": "t",
         "error": "x\r\nts=0 level=error msg=forged \x1b[2J\x9b\u2028"}
    )  # fmt: skip
    line = LogfmtFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x9b" not in line
    assert "\u2028" not in line
    assert 'error="x\\r\\nts=0 level=error msg=forged \\x1b[2J\\x9b\\u2028"' in line


async def test_gateway_redis_pool_waits_instead_of_failing(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """With its Redis connections all busy, the gateway waits for one: 300 /client clients on
    a pool of 4 all get the call list (before: 874 of 1,000 closed "redis unavailable")."""
    await FakeTranscriber(redis, "CApool").start()
    tok = token()
    async with secure_gateway(
        redis_max_connections=4, max_connections_per_ip=1000, http_max_requests_per_s=1000
    ) as port:

        async def one() -> object:
            async with connect(f"ws://127.0.0.1:{port}/client?token={tok}") as ws:
                return await recv_json(ws, timeout_s=WAIT_S * 2)

        async with asyncio.timeout(WAIT_S * 4):
            lists = await asyncio.gather(*(one() for _ in range(300)))
    assert lists == [["CApool"]] * 300


async def test_v1_ws_idle_clients_are_closed(secure_gateway, redis: aioredis.Redis) -> None:
    """A /v1/ws client that follows nothing and says nothing is closed 1008 after
    CLIENT_IDLE_S (before: kept for ever); one that follows a call is kept."""
    await FakeTranscriber(redis, "CAidle").start()
    tok = token()
    async with (
        secure_gateway(client_idle_s=0.3) as port,
        connect(f"ws://127.0.0.1:{port}/v1/ws?token={tok}") as idle,
        connect(f"ws://127.0.0.1:{port}/v1/ws?token={tok}") as busy,
    ):
        await busy.send('{"type":"subscribe","call_sid":"CAidle"}')
        assert (await recv_json(busy))["type"] == "subscribed"
        with pytest.raises(ConnectionClosed):
            await recv_json(idle)
        assert (idle.close_code, idle.close_reason) == (1008, "idle")
        await busy.send('{"type":"list"}')
        assert (await recv_json(busy))["type"] == "calls"


async def test_per_address_connection_and_message_limits(secure_gateway, ingest) -> None:
    """Per client address: WebSockets beyond INGEST_/GATEWAY_MAX_CONNECTIONS_PER_IP get 429 (gateway and
    ingest), HTTP beyond HTTP_MAX_REQUESTS_PER_S gets 429, and a /v1/ws client sending
    faster than CLIENT_MAX_MSGS_PER_S is closed 1008."""
    tok = token()
    async with secure_gateway(
        max_connections_per_ip=2, client_max_msgs_per_s=5, http_max_requests_per_s=5
    ) as port:
        url = f"ws://127.0.0.1:{port}/v1/ws?token={tok}"
        async with connect(url) as a, connect(url):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 429
            with pytest.raises(ConnectionClosed):
                for _ in range(200):
                    await a.send('{"type":"list"}')
                async with asyncio.timeout(WAIT_S):
                    while True:
                        await a.recv()
            assert (a.close_code, a.close_reason) == (1008, "too many messages")
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            codes = [
                (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code for _ in range(30)
            ]
        assert 429 in codes and codes[0] == 200
    async with (
        ingest(max_connections_per_ip=1) as port,
        connect(f"ws://127.0.0.1:{port}/twilio"),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{port}/twilio"):
                pass
        assert refused.value.response.status_code == 429
