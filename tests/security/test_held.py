"""Issue 8, "what held, keep it": the message size limits, and secrets never logged.

Tried as the issue did: oversized WebSocket messages at real sockets of running services, and a
whole call through the three service processes (their real logging, at DEBUG) with every secret
set, then their logs searched for each secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from callscribe.simulate import signature_url
from callscribe.twilio_client import SimCall, fetch_stream_parameters, stream_call, twilio_messages
from services.gateway.auth import mint
from services.gateway.sockets import MAX_CLIENT_MESSAGE_BYTES
from services.ingest.streams import MAX_MESSAGE_BYTES
from shared import keys
from tests.fakes.deepgram import FakeDeepgram, Turn
from tests.gateway.conftest import FakeTranscriber, recv_json
from tests.ingest.conftest import WAIT_S, read_audio
from tests.security.conftest import PUBLIC_URL, service_env, service_process, token

CALL_WAIT_S = 60.0
"""Upper bound of a whole call through the three processes (start, transcription, end), s."""


async def _closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes ``ws``; its (close code, reason)."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(WAIT_S):
            while True:
                await ws.recv()
    return ws.close_code, ws.close_reason or ""


async def test_twilio_messages_over_1_mib_are_refused_and_ingest_stays_up(
    ingest, redis: aioredis.Redis
) -> None:
    """A /twilio message of 1 MiB + 1 byte, in one frame or in 64 KiB fragments, is refused
    with close 1009 (message too big) and makes no call; a POST /twiml over 1 MiB gets 413;
    ingest stays up: /healthz answers and the next call is written whole."""
    big = "x" * (MAX_MESSAGE_BYTES + 1)
    chunk = 1 << 16
    async with ingest() as port:
        url = f"ws://127.0.0.1:{port}/twilio"
        async with connect(url) as ws:
            await ws.send(big)
            assert await _closed_with(ws) == (1009, "")
        call = SimCall(tracks=[b"\x55" * 1600])
        connected, start = [t for _, t in twilio_messages(call)][:2]
        async with connect(url) as ws:
            await ws.send(connected)
            await ws.send(iter(big[i : i + chunk] for i in range(0, len(big), chunk)))
            assert (await _closed_with(ws))[0] == 1009
        async with connect(url) as ws:
            padded = json.loads(start)
            padded["padding"] = big
            await ws.send(connected)
            await ws.send(json.dumps(padded))
            assert (await _closed_with(ws))[0] == 1009
        assert not await redis.exists(keys.meta(call.call_sid))
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            base = f"http://127.0.0.1:{port}"
            form = {"CallSid": "CA1", "Note": big}
            assert (await http.post(f"{base}/twiml", data=form)).status_code == 413
            assert (await http.get(f"{base}/healthz")).status_code == 200
        after = SimCall(tracks=[b"\x55" * 1600])
        await stream_call(url, after, speed=0)
        frames = await read_audio(redis, after.call_sid)
    assert b"".join(f.pcmu for f in frames if not f.eof) == b"\x55" * 1600


async def test_client_messages_over_64_kib_are_refused_and_the_gateway_stays_up(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """A /v1/ws or /client message over 64 KiB (MAX_CLIENT_MESSAGE_BYTES) is refused with close
    1009; the gateway stays up: another client lists the call."""
    await FakeTranscriber(redis, "CAbig").start()
    big = json.dumps({"type": "list", "pad": "x" * MAX_CLIENT_MESSAGE_BYTES})
    tok = token()
    async with secure_gateway() as port:
        for path in ("/v1/ws", "/client"):
            async with connect(f"ws://127.0.0.1:{port}{path}?token={tok}") as ws:
                if path == "/client":
                    assert await recv_json(ws) == ["CAbig"]
                await ws.send(big)
                assert (await _closed_with(ws))[0] == 1009, path
        async with connect(f"ws://127.0.0.1:{port}/v1/ws?token={tok}") as ws:
            await ws.send('{"type":"list"}')
            assert (await recv_json(ws))["calls"][0]["call_sid"] == "CAbig"


@contextlib.asynccontextmanager
async def _redis_user(redis: aioredis.Redis, url: str) -> AsyncIterator[tuple[str, str]]:
    """A password-protected ACL user on the session's redis-server (the default user, which
    other tests use, is left alone): yields (its redis:// URL, its password); removed after."""
    user, password = "cs-secret-test", "redispw-" + secrets.token_hex(12)
    await redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
        reset=True,
    )
    try:
        yield url.replace("redis://", f"redis://{user}:{password}@", 1), password
    finally:
        await redis.acl_deluser(user)


async def _follow_next_call(gateway: int, tok: str, sid: str) -> list[dict[str, Any]]:
    """On /v1/ws with ``tok``: wait for the call ``sid`` to start, subscribe from its start, and
    return what it sent up to ``end``."""
    got: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{gateway}/v1/ws?token={tok}") as ws:
        await ws.send('{"type":"list"}')
        async with asyncio.timeout(CALL_WAIT_S):
            while True:
                msg = json.loads(await ws.recv())
                listed = msg["type"] == "calls" and sid in {c["call_sid"] for c in msg["calls"]}
                started = msg["type"] == "call_started" and msg["call"]["call_sid"] == sid
                if listed or started:
                    await ws.send(json.dumps({"type": "subscribe", "call_sid": sid, "since": "0"}))
                if msg.get("call_sid") == sid:
                    got.append(msg)
                    if msg["type"] == "end":
                        return got


async def test_secrets_never_reach_the_logs(redis_url: str, redis: aioredis.Redis) -> None:
    """A call through ingest, a Deepgram transcriber and the gateway as processes at
    LOG_LEVEL=DEBUG, with a Redis password, TWILIO_AUTH_TOKEN, DEEPGRAM_API_KEY and JWT_SECRET
    set, watched with a JWT (in the URL), replayed (refused), and refused tokens and signatures
    tried: no log line of any service holds a secret, a token, or the stream token."""
    twilio_token = "twilio-" + secrets.token_hex(16)
    jwt_secret = "jwtsecret-" + secrets.token_hex(16)
    dg_key = "dgkey-" + secrets.token_hex(16)
    good = mint(jwt_secret, history=True)
    stale = mint(jwt_secret, ttl_s=60, now=time.time() - 120)
    call = SimCall(tracks=[b"\x55" * 16_000], custom_parameters={"From": "+15550001"})
    script = [Turn(0, 0.2, 1.0, "my card number is four two")]
    async with _redis_user(redis, redis_url) as (url, password):
        common = {"REDIS_URL": url, "LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"}
        ingest_env = service_env(**common, TWILIO_AUTH_TOKEN=twilio_token, PUBLIC_URL=PUBLIC_URL)
        async with (
            FakeDeepgram(script, api_key=dg_key) as dg,
            service_process("ingest", ingest_env) as ingest,
            service_process(
                "transcriber",
                service_env(
                    **common, ASR_ENGINE="deepgram", DEEPGRAM_URL=dg.url, DEEPGRAM_API_KEY=dg_key
                ),
            ) as transcriber,
            service_process("gateway", service_env(**common, JWT_SECRET=jwt_secret)) as gateway,
            httpx.AsyncClient(timeout=WAIT_S) as http,
        ):
            ingest_url = f"http://127.0.0.1:{ingest.port}"
            gateway_url = f"http://127.0.0.1:{gateway.port}"
            params = await fetch_stream_parameters(
                f"{ingest_url}/twiml",
                call,
                auth_token=twilio_token,
                signature_url=f"{PUBLIC_URL}/twiml",
            )
            stream_token = params["StreamToken"]
            call.custom_parameters.update(params)
            watcher = asyncio.create_task(_follow_next_call(gateway.port, good, call.call_sid))
            signed = {"auth_token": twilio_token, "signature_url": signature_url(PUBLIC_URL)}
            await stream_call(f"ws://127.0.0.1:{ingest.port}/twilio", call, speed=0, **signed)
            async with asyncio.timeout(CALL_WAIT_S):
                seen = await watcher
            assert any(m["type"] == "transcript" and m["is_final"] for m in seen), seen
            with contextlib.suppress(ConnectionClosed):  # the replay is refused (1008)
                await stream_call(f"ws://127.0.0.1:{ingest.port}/twilio", call, speed=0, **signed)
            forged = {"X-Twilio-Signature": "Zm9yZ2Vk"}
            twiml = await http.post(f"{ingest_url}/twiml", data={"CallSid": "CA1"}, headers=forged)
            assert twiml.status_code == 403
            for headers in ({"Authorization": f"Bearer {stale}"}, {"Authorization": good}):
                assert (
                    await http.get(f"{gateway_url}/v1/calls", headers=headers)
                ).status_code == 401
            transcript = await http.get(
                f"{gateway_url}/v1/calls/{call.call_sid}/transcript",
                headers={"Authorization": f"Bearer {good}"},
            )
            assert "four two" in transcript.text
            async with connect(f"ws://127.0.0.1:{gateway.port}/v1/ws?token={stale}") as ws:
                assert (await _closed_with(ws))[0] == 1008
            async with connect(f"ws://127.0.0.1:{gateway.port}/client?token={good}") as ws:
                await recv_json(ws)
    logs = {"ingest": ingest.log, "transcriber": transcriber.log, "gateway": gateway.log}
    assert "stream refused" in logs["ingest"] and "websocket refused" in logs["gateway"], logs
    secret_values = {
        "redis password": password,
        "TWILIO_AUTH_TOKEN": twilio_token,
        "JWT_SECRET": jwt_secret,
        "DEEPGRAM_API_KEY": dg_key,
        "stream token": stream_token,
    }
    for name, tok in (("good", good), ("expired", stale)):
        # its signature: the header and the payload's start are the same for many tokens
        secret_values[f"{name} watcher token"] = tok.rsplit(".", 1)[1]
    for service, text in logs.items():
        for what, value in secret_values.items():
            for part in (value, value[:16], value[-16:]):  # whole, or cut to fit a log line
                assert part not in text, f"{service} logged the {what}"
