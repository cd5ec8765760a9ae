"""Issue 8, "the gateway has no authentication": tokens, scopes, Origin, on every endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ROOT
from tests.gateway.conftest import WAIT_S, FakeTranscriber, recv_json
from tests.security.conftest import (
    SECRET,
    bearer,
    expired,
    run_to_exit,
    service_env,
    service_process,
    token,
)


async def _closed_before_anything(url: str, **kw: object) -> tuple[int | None, str]:
    """Connect and read: the server must close (code, reason) without sending a message."""
    async with connect(url, **kw) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                message = await ws.recv()
                pytest.fail(f"got a message before authentication: {message[:80]!r}")
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


async def test_every_data_endpoint_refuses_without_a_valid_token(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """REST answers 401 with a JSON error (no, expired, forged token); both WebSockets close
    1008 "unauthorized" before sending any call list; a valid token reads the call."""
    call = FakeTranscriber(redis, "CAsecret")
    await call.start()
    await call.final("card number four two four two")
    forged = jwt.encode(
        {"scope": "all", "exp": time.time() + 60, "aud": "callscribe"},
        "a-guessed-secret-of-thirty-two-bytes",
    )
    async with secure_gateway() as port, httpx.AsyncClient(timeout=WAIT_S) as http:
        base = f"http://127.0.0.1:{port}"
        for path in ("/v1/calls", "/v1/calls/CAsecret", "/v1/calls/CAsecret/transcript"):
            for headers in ({}, bearer(expired()), bearer(forged), {"Authorization": "Basic x"}):
                reply = await http.get(base + path, headers=headers)
                assert reply.status_code == 401, (path, headers)
                assert reply.json()["code"] == "unauthorized"
                assert "CAsecret" not in reply.text and "four" not in reply.text
        good = bearer(token(history=True))
        assert [c["call_sid"] for c in (await http.get(base + "/v1/calls", headers=good)).json()]
        transcript = await http.get(base + "/v1/calls/CAsecret/transcript", headers=good)
        assert transcript.json()[0]["text"] == "card number four two four two"
        assert (await http.get(base + "/healthz")).status_code == 200
        assert (await http.get(base + "/")).status_code == 200  # the page asks for a token
        for path in ("/client", "/v1/ws"):
            for query in ("", f"?token={expired()}", f"?token={forged}"):
                code, reason = await _closed_before_anything(f"ws://127.0.0.1:{port}{path}{query}")
                assert code == 1008 and reason.startswith("unauthorized"), (path, reason)
        async with connect(f"ws://127.0.0.1:{port}/client?token={token()}") as ws:
            assert await recv_json(ws) == ["CAsecret"]
        async with connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=good) as ws:
            await ws.send('{"type":"list"}')
            assert (await recv_json(ws))["calls"][0]["call_sid"] == "CAsecret"


async def test_scope_limits_lists_subscriptions_rest_and_pushed_events(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """A token for one number sees only calls from/to it: REST list and meta, /v1/ws list,
    pushed call_started, subscribe, /client greeting; others are "unknown" like no call."""
    mine, other = FakeTranscriber(redis, "CAmine"), FakeTranscriber(redis, "CAother")
    mine.meta.from_, other.meta.from_ = "+15550001", "+15559999"
    await mine.start()
    await other.start()
    tok = token(scope="numbers", numbers=["+15550001"])
    async with secure_gateway() as port, httpx.AsyncClient(timeout=WAIT_S) as http:
        base = f"http://127.0.0.1:{port}"
        listed = (await http.get(base + "/v1/calls", headers=bearer(tok))).json()
        assert [c["call_sid"] for c in listed] == ["CAmine"]
        assert (await http.get(base + "/v1/calls/CAother", headers=bearer(tok))).status_code == 404
        hidden = await http.get(base + "/v1/calls/CAother/transcript", headers=bearer(tok))
        assert hidden.json()["code"] == "unknown_call"
        async with connect(f"ws://127.0.0.1:{port}/client?token={tok}") as ws:
            assert await recv_json(ws) == ["CAmine"]
        async with connect(f"ws://127.0.0.1:{port}/v1/ws?token={tok}") as ws:
            await ws.send('{"type":"list"}')
            assert [c["call_sid"] for c in (await recv_json(ws))["calls"]] == ["CAmine"]
            await ws.send('{"type":"subscribe","call_sid":"CAother","since":"0"}')
            assert (await recv_json(ws))["code"] == "unknown_call"
            late_other, late_mine = (
                FakeTranscriber(redis, "CAlate1"),
                FakeTranscriber(redis, "CAlate2"),
            )
            late_mine.meta.to = "+15550001"
            await late_other.start()
            await late_mine.start()
            pushed = await recv_json(ws)
            assert (pushed["type"], pushed["call"]["call_sid"]) == ("call_started", "CAlate2")


async def test_call_scope_without_history_gets_live_only(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """A one-call token without history: no transcript over REST (403), no replay on
    subscribe (since is ignored), live finals still arrive."""
    call = FakeTranscriber(redis, "CAone")
    await call.start()
    await call.final("said before the token was used")
    tok = token(scope="call", call_sid="CAone", history=False)
    async with secure_gateway() as port, httpx.AsyncClient(timeout=WAIT_S) as http:
        reply = await http.get(
            f"http://127.0.0.1:{port}/v1/calls/CAone/transcript", headers=bearer(tok)
        )
        assert (reply.status_code, reply.json()["code"]) == (403, "forbidden")
        async with connect(f"ws://127.0.0.1:{port}/v1/ws?token={tok}") as ws:
            await ws.send('{"type":"subscribe","call_sid":"CAone","since":"0"}')
            assert (await recv_json(ws))["type"] == "subscribed"
            await asyncio.sleep(0.2)  # the subscription reaches Redis (no event crosses it)
            await call.final("said live")
            assert (await recv_json(ws))["text"] == "said live"


async def test_origin_allow_list_on_every_websocket(secure_gateway) -> None:
    """A foreign page (Origin null or another site) gets HTTP 403 before any upgrade; no
    Origin (a terminal client), the gateway's own origin and listed ones are let through."""
    tok = token()
    async with secure_gateway(allowed_origins="https://ops.example.com") as port:
        for path in ("/client", "/v1/ws"):
            url = f"ws://127.0.0.1:{port}{path}?token={tok}"
            for origin in ("null", "https://evil.example", f"http://127.0.0.1:{port + 1}"):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(url, origin=origin):  # type: ignore[arg-type]
                        pass
                assert refused.value.response.status_code == 403, origin
            for origin in (None, f"http://127.0.0.1:{port}", "https://ops.example.com"):
                async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                    if path == "/client":
                        assert await recv_json(ws) == []


async def test_token_expiry_closes_the_socket(secure_gateway) -> None:
    """A WebSocket opened with a token is closed 1008 when that token expires.

    The token lives at least 2 s (``mint`` rounds ``exp`` up), so the list reply comes first.
    """
    tok = token(ttl_s=2)
    async with (
        secure_gateway() as port,
        connect(f"ws://127.0.0.1:{port}/v1/ws?token={tok}") as ws,
    ):
        await ws.send('{"type":"list"}')
        await recv_json(ws)
        with pytest.raises(ConnectionClosed):
            await recv_json(ws, timeout_s=WAIT_S)
        assert ws.close_code == 1008 and "expired" in (ws.close_reason or "")


async def test_jwks_tokens_from_an_identity_provider(secure_gateway) -> None:
    """With JWKS_URL, RS256 tokens signed by the provider's key pass; one signed by another
    key, or an HS256 token made with the public key (algorithm confusion), does not."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    claims = {"scope": "all", "aud": "callscribe", "exp": int(time.time()) + 60}
    good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    wrong = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"})
    try:
        jwks_url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
        async with (
            secure_gateway(jwt_secret=None, jwks_url=jwks_url) as port,
            httpx.AsyncClient(timeout=WAIT_S) as http,
        ):
            url = f"http://127.0.0.1:{port}/v1/calls"
            assert (await http.get(url, headers=bearer(good))).status_code == 200
            assert (await http.get(url, headers=bearer(wrong))).status_code == 401
            hs = jwt.encode(claims, SECRET, algorithm="HS256")
            assert (await http.get(url, headers=bearer(hs))).status_code == 401
    finally:
        await runner.cleanup()


async def test_gateway_refuses_to_start_without_a_key_and_warns_when_open(redis_url: str) -> None:
    """The default (GATEWAY_AUTH=jwt) without JWT_SECRET or JWKS_URL exits 2 with one line;
    GATEWAY_AUTH=none is an explicit choice (the demo's) and is logged as one warning line at
    start (it was logged twice: by the start-up check, then by the gateway); with a key, no
    warning at all."""
    refused = await run_to_exit([sys.executable, "-m", "services.gateway", "--port", "0"])
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "JWT_SECRET" in lines[0], refused.stderr
    env = service_env(REDIS_URL=redis_url, GATEWAY_AUTH="none")
    async with service_process("gateway", env) as open_gateway:
        pass
    warnings = open_gateway.warnings()
    assert len(warnings) == 1, open_gateway.log
    assert 'msg="GATEWAY_AUTH=none: every client sees every call, unauthenticated"' in warnings[0]
    async with service_process(
        "gateway", service_env(REDIS_URL=redis_url, JWT_SECRET=SECRET)
    ) as keyed:
        pass
    assert keyed.warnings() == [], keyed.log


def test_callscribe_token_mints_what_the_gateway_accepts() -> None:
    """`callscribe token --number N --history` prints a token with that scope and an expiry."""
    cli = str(ROOT / ".venv/bin/callscribe") if (ROOT / ".venv/bin/callscribe").exists() else None
    argv = [cli] if cli else [sys.executable, "-m", "callscribe.cli"]
    out = subprocess.run(
        [*argv, "token", "--number", "+15550001", "--history", "--ttl-s", "600"],
        env={**os.environ, "JWT_SECRET": SECRET}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"], audience="callscribe")
    assert (claims["scope"], claims["numbers"], claims["history"]) == (
        "numbers",
        ["+15550001"],
        True,
    )
    assert 590 <= claims["exp"] - time.time() <= 601  # exp is rounded up to whole seconds
    missing = subprocess.run(
        [*argv, "token"], env={k: v for k, v in os.environ.items() if k != "JWT_SECRET"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 2 and "JWT_SECRET" in missing.stderr
