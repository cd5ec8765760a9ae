"""Issue 8, "only Twilio starts calls": stream tokens, no takeover, signatures, refusal to start."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callscribe.twilio_client import SimCall, fetch_stream_parameters, sign, twilio_messages
from shared import keys
from shared.schema import CallMeta
from tests.ingest.conftest import WAIT_S, read_audio
from tests.metrics_util import scrape
from tests.partitions import active_count, job_count
from tests.security.conftest import (
    PUBLIC_URL,
    TWILIO_TOKEN,
    run_to_exit,
    service_env,
    service_process,
)

WS_SIGNATURE = {"X-Twilio-Signature": sign("ws://ingest.test/twilio", {}, TWILIO_TOKEN)}
"""The handshake signature Twilio sends: it never changes, so an attacker may have it."""


ADMITTED_AFTER_S = 0.5
"""A socket the server has not closed this long after the last message was admitted (ingest
sends nothing on /twilio, so there is no event to await; a refusal comes within milliseconds)."""


async def _stream(port: int, messages: list[str], headers: dict[str, str]) -> int | None:
    """Send ``messages`` on one /twilio socket; the server's close code, None when admitted."""
    async with connect(f"ws://127.0.0.1:{port}/twilio", additional_headers=headers) as ws:
        try:
            for text in messages:
                await ws.send(text)
            async with asyncio.timeout(ADMITTED_AFTER_S):
                await ws.recv()
        except ConnectionClosed:
            return ws.close_code
        except TimeoutError:
            return None
    return None


def _call(**kw: object) -> SimCall:
    return SimCall(tracks=[bytes([0x55]) * 1600], **kw)  # type: ignore[arg-type]


async def test_a_start_without_a_valid_token_never_reaches_a_worker(
    secure_ingest, redis: aioredis.Redis
) -> None:
    """With the (static, capturable) handshake signature but no token, a made-up token, or a
    token issued for another call, a start is closed 1008 and writes nothing: no job, no
    active call, no metadata. (Before: 3 of 3 replays were transcribed.)"""
    async with secure_ingest() as port:
        other = _call()
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            issued = await fetch_stream_parameters(
                f"http://127.0.0.1:{port}/twiml",
                other,
                auth_token=TWILIO_TOKEN,
                signature_url=f"{PUBLIC_URL}/twiml",
            )
            assert await http.get(f"http://127.0.0.1:{port}/healthz")
        for params in ({}, {"StreamToken": "made-up"}, {"StreamToken": issued["StreamToken"]}):
            fake = _call(custom_parameters=params)
            msgs = [t for _, t in twilio_messages(fake)]
            assert await _stream(port, msgs, WS_SIGNATURE) == 1008
            assert not await redis.exists(keys.meta(fake.call_sid))
        assert await job_count(redis) == 0
        assert await active_count(redis) == 0
        with pytest.raises(InvalidStatus) as unsigned:
            async with connect(f"ws://127.0.0.1:{port}/twilio"):
                pass
        assert unsigned.value.response.status_code == 403


async def test_a_token_works_once_and_a_replayed_stream_is_refused(
    secure_ingest, redis: aioredis.Redis
) -> None:
    """The call Twilio starts (TwiML, then its stream with the token) is transcribed once; the
    same handshake and start replayed are refused with 1008 and add no second job."""
    async with secure_ingest() as port:
        call = _call()
        params = await fetch_stream_parameters(
            f"http://127.0.0.1:{port}/twiml",
            call,
            auth_token=TWILIO_TOKEN,
            signature_url=f"{PUBLIC_URL}/twiml",
        )
        call.custom_parameters.update(params)
        msgs = [t for _, t in twilio_messages(call)]
        assert await _stream(port, msgs, WS_SIGNATURE) is None  # admitted
        frames = await read_audio(redis, call.call_sid)
        assert frames[-1].eof
        meta = CallMeta.from_redis(await redis.hgetall(keys.meta(call.call_sid)))
        assert "StreamToken" not in meta.custom_parameters  # never shown to watchers
        assert await _stream(port, msgs, WS_SIGNATURE) == 1008
        assert await job_count(redis) == 1


async def test_refused_starts_are_counted_in_metrics(secure_ingest, redis: aioredis.Redis) -> None:
    """Each refused start adds one to ``callscribe_ingest_streams_refused_total`` on ingest's
    /metrics (no token, a made-up one, a replayed one); an admitted call does not."""
    refused = "callscribe_ingest_streams_refused_total"
    async with secure_ingest() as port:
        metrics = f"http://127.0.0.1:{port}/metrics"
        assert (await scrape(metrics))[refused] == 0
        for params in ({}, {"StreamToken": "made-up"}):
            fake = _call(custom_parameters=params)
            assert await _stream(port, [t for _, t in twilio_messages(fake)], WS_SIGNATURE) == 1008
        assert (await scrape(metrics))[refused] == 2
        call = _call()
        call.custom_parameters.update(
            await fetch_stream_parameters(
                f"http://127.0.0.1:{port}/twiml",
                call,
                auth_token=TWILIO_TOKEN,
                signature_url=f"{PUBLIC_URL}/twiml",
            )
        )
        msgs = [t for _, t in twilio_messages(call)]
        assert await _stream(port, msgs, WS_SIGNATURE) is None  # admitted
        assert (await read_audio(redis, call.call_sid))[-1].eof
        samples = await scrape(metrics)
        assert (samples[refused], samples["callscribe_ingest_calls_started_total"]) == (2, 1)
        assert await _stream(port, msgs, WS_SIGNATURE) == 1008  # the replay
        assert (await scrape(metrics))[refused] == 3


async def test_a_second_stream_cannot_take_a_live_call_over(ingest, redis: aioredis.Redis) -> None:
    """Even without stream tokens (TWILIO_INSECURE), a second start with a live call's callSid
    is refused 1008: the call's meta is not overwritten, it is not ended, and its audio stays
    whole. (Before: meta overwritten, the call ended, 19.6 s of it silence.)"""
    async with ingest() as port:
        victim = _call(custom_parameters={"From": "+15550001"})
        msgs = [t for _, t in twilio_messages(victim)]
        async with connect(f"ws://127.0.0.1:{port}/twilio") as real:
            for text in msgs[:30]:
                await real.send(text)
            async with asyncio.timeout(WAIT_S):
                while not await redis.exists(keys.meta(victim.call_sid)):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            thief = _call(call_sid=victim.call_sid, custom_parameters={"From": "+15556666"})
            assert await _stream(port, [t for _, t in twilio_messages(thief)], {}) == 1008
            for text in msgs[30:]:
                await real.send(text)
        frames = await read_audio(redis, victim.call_sid)
        meta = CallMeta.from_redis(await redis.hgetall(keys.meta(victim.call_sid)))
    assert (meta.from_, meta.stream_sid) == ("+15550001", victim.stream_sid)
    pcmu = b"".join(f.pcmu for f in frames if not f.eof)
    assert pcmu == bytes([0x55]) * 1600  # every byte the victim sent, no silence
    assert await job_count(redis) == 1


async def test_accountsid_must_be_ours(ingest, redis: aioredis.Redis) -> None:
    """With TWILIO_ACCOUNT_SID set, a start for another account is refused with 1008."""
    async with ingest(twilio_account_sid="AC" + "1" * 32) as port:
        stranger = _call(account_sid="AC" + "2" * 32)
        assert await _stream(port, [t for _, t in twilio_messages(stranger)], {}) == 1008
        ours = _call(account_sid="AC" + "1" * 32)
        await _stream(port, [t for _, t in twilio_messages(ours)], {})
        assert (await read_audio(redis, ours.call_sid))[-1].eof
    assert not await redis.exists(keys.meta(stranger.call_sid))


async def test_forwarded_host_cannot_redirect_the_signature_check(ingest) -> None:
    """A signature made for another app's URL does not pass by naming that host in
    X-Forwarded-Host (the check uses PUBLIC_URL, or the request's own Host)."""
    form = {"CallSid": "CA1", "From": "+1"}
    other_app = sign("https://other-app.example/twiml", form, TWILIO_TOKEN)
    headers = {
        "X-Twilio-Signature": other_app,
        "X-Forwarded-Host": "other-app.example",
        "X-Forwarded-Proto": "https",
    }
    async with (
        ingest(twilio_auth_token=TWILIO_TOKEN) as port,
        httpx.AsyncClient(timeout=WAIT_S) as http,
    ):
        reply = await http.post(f"http://127.0.0.1:{port}/twiml", data=form, headers=headers)
    assert reply.status_code == 403


async def test_ingest_refuses_to_start_unprotected(redis_url: str) -> None:
    """Without TWILIO_AUTH_TOKEN and PUBLIC_URL (and no TWILIO_INSECURE) ingest exits 2 with
    one line naming them. (Before: it accepted everything, one warning at the first request.)
    TWILIO_INSECURE is logged as one warning line at start; a protected ingest logs none."""
    refused = await run_to_exit([sys.executable, "-m", "services.ingest", "--port", "0"])
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "TWILIO_AUTH_TOKEN and PUBLIC_URL" in lines[0], refused.stderr
    async with service_process(
        "ingest", service_env(REDIS_URL=redis_url, TWILIO_INSECURE="1")
    ) as open_ingest:
        pass
    warnings = open_ingest.warnings()
    assert len(warnings) == 1, open_ingest.log
    assert (
        'msg="TWILIO_INSECURE: unsigned requests and streams without tokens are accepted"'
        in warnings[0]
    )
    env = service_env(REDIS_URL=redis_url, TWILIO_AUTH_TOKEN=TWILIO_TOKEN, PUBLIC_URL=PUBLIC_URL)
    async with service_process("ingest", env) as protected:
        pass
    assert protected.warnings() == [], protected.log


async def test_simulate_works_against_a_secured_ingest(
    secure_ingest, redis: aioredis.Redis, tmp_path
) -> None:
    """`callscribe simulate --auth-token --public-url` signs as Twilio, fetches the stream
    token from /twiml first, and its call is admitted and written."""
    from callscribe.simulate import SimulateOptions, signature_url, simulate, webhook_signature_url

    out = tmp_path / "out.txt"
    async with secure_ingest() as port:
        with out.open("w") as sink:
            status = await simulate(
                [bytes([0x55]) * 1600],
                SimulateOptions(
                    ingest_url=f"ws://127.0.0.1:{port}/twilio",
                    speed=0,
                    auth_token=TWILIO_TOKEN,
                    signature_url=signature_url(PUBLIC_URL),
                    webhook_signature_url=webhook_signature_url(PUBLIC_URL),
                ),
                out=sink,
            )
        assert status == 0, out.read_text()
        sid = out.read_text().split()[2]
        assert (await read_audio(redis, sid))[-1].eof
