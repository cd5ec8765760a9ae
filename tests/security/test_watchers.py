"""Issue 8, "done when": ``callscribe watch`` and the web page work with authentication on, and
say so (a non-zero exit, the "not authorised" prompt) instead of hanging without a valid token.

Both are driven as a person would: the real ``callscribe`` command in a process (its token from
``callscribe token``), the page in headless Chromium; the gateway checks JWTs
(:func:`tests.security.conftest.secure_gateway`).
"""

from __future__ import annotations

import asyncio
import sys

import jwt
import redis.asyncio as aioredis

from tests.conftest import ROOT
from tests.gateway.conftest import FakeTranscriber
from tests.gateway.test_page_chromium import chromium
from tests.security.conftest import (
    PROCESS_WAIT_S,
    SECRET,
    expired,
    run_to_exit,
    service_env,
    token,
)

CLI = [sys.executable, "-m", "callscribe.cli"]
"""The ``callscribe`` command of this checkout."""

SID = "CA" + "7" * 32


async def _minted(*options: str) -> str:
    """A token printed by ``callscribe token <options>`` with the gateway's secret."""
    out = await run_to_exit([*CLI, "token", *options], service_env(JWT_SECRET=SECRET))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def _readline(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(PROCESS_WAIT_S):
        line = await stream.readline()
    assert line, "watch exited early"
    return line.decode()


async def test_watch_follows_a_call_to_its_end_with_a_token(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """``callscribe watch --token`` with a token from ``callscribe token --number N --history``
    waits for the next call of that number, prints its finals on the right speaker, and exits
    0 at its end; a call of another number started meanwhile is not shown."""
    tok = await _minted("--number", "+15550001", "--history")
    other, call = FakeTranscriber(redis, "CA" + "8" * 32), FakeTranscriber(redis, SID)
    other.meta.from_, call.meta.from_ = "+15559999", "+15550001"
    async with secure_gateway() as port:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "watch", "--gateway", f"ws://127.0.0.1:{port}", "--token", tok,
            cwd=ROOT, env=service_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            assert "waiting for the next one" in await _readline(proc.stdout)
            await other.start()  # not this token's: never pushed, so never followed
            await call.start()
            assert f"watching call {SID}" in await _readline(proc.stdout)
            await call.final("my card number is four two four two")
            await call.final("thank you, that is noted", channel=1)
            await call.end()
            async with asyncio.timeout(PROCESS_WAIT_S):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[:2] == [
        "[00:00] caller: my card number is four two four two",
        "[00:01] callee: thank you, that is noted",
    ], lines
    assert lines[-1].startswith(f"call {SID} ended"), lines
    assert other.sid not in out.decode()


async def test_watch_without_a_valid_token_fails_at_once_saying_why(secure_gateway) -> None:
    """No token, an expired one (``--token``) or one signed with another secret
    (``$CALLSCRIBE_TOKEN``): watch exits 1 with ``refused by the gateway: unauthorized: <why>``,
    no traceback, and does not retry or hang."""
    forged = jwt.encode(
        {"scope": "all", "aud": "callscribe", "exp": 4_000_000_000},
        "another-secret-of-at-least-thirty-two-bytes",
    )
    async with secure_gateway() as port:
        watch = [*CLI, "watch", "--gateway", f"ws://127.0.0.1:{port}"]
        cases = [
            (watch, service_env(), "a bearer token is required"),
            ([*watch, "--token", expired()], service_env(), "the token has expired"),
            (watch, service_env(CALLSCRIBE_TOKEN=forged), "invalid token"),
        ]
        for argv, env, why in cases:
            out = await run_to_exit(argv, env)
            assert out.returncode == 1, (why, out)
            assert f"refused by the gateway: unauthorized: {why}" in out.stdout, out
            assert "reconnecting" not in out.stdout and "Traceback" not in out.stderr, out


async def test_page_asks_for_a_token_and_takes_one_from_its_link(
    secure_gateway, redis: aioredis.Redis
) -> None:
    """The page without a token lists nothing and shows the "not authorised" prompt; a token
    typed in it lists the call; a link with an expired token gets the prompt again; a link
    with ``?token=`` lists and watches the call (live finals shown), and the token is removed
    from the address bar."""
    call = FakeTranscriber(redis, SID)
    call.meta.from_, call.meta.to = "+15550001111", "+15550002222"
    await call.start()
    tok = token(history=True)
    refused = (
        "document.getElementById('conn').textContent === 'not authorised'"
        " && !document.getElementById('auth').hidden"
        " && document.getElementById('status').textContent"
    )
    listed = "document.querySelectorAll('#list .call').length === 1"
    async with chromium() as page, secure_gateway() as port:
        base = f"http://127.0.0.1:{port}/"
        await page.goto(base)
        status = await page.until(refused)
        assert status == "Not authorised: a bearer token is required. Enter a token.", status
        assert await page.js("document.querySelectorAll('#list .call').length") == 0
        await page.screenshot("page_not_authorised.png")

        await page.js(
            f"document.getElementById('token').value = {tok!r};"
            "document.getElementById('auth').requestSubmit()"
        )
        await page.until(listed)
        assert await page.js("document.getElementById('auth').hidden") is True

        await page.goto(f"{base}?token={expired()}")
        status = await page.until(refused)
        assert status.startswith("Not authorised: the token has expired"), status

        await page.goto(f"{base}?token={tok}&call={SID}")
        row = await page.until(f"{listed} && document.querySelector('#list .call').textContent")
        assert "+15550001111 → +15550002222" in row, row
        assert await page.js("location.search") == f"?call={SID}"  # the token is gone from it
        await call.final("Thanks for calling, how can I help?", channel=1)
        line = await page.until("document.querySelector('#lines .line.callee')?.textContent")
        assert "Thanks for calling, how can I help?" in line, line
