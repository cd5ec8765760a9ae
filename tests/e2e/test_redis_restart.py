"""End to end: Redis killed (SIGKILL) and restarted mid-call, with and without persistence.

With AOF (as docker-compose.yml runs it) the restart loses nothing: the call goes on and the
watcher gets every final exactly once. Without persistence Redis comes back empty: the owning
transcriber rebuilds the call (meta, active set, job), the watcher is told (`error`
`data_lost`), the finals after the loss arrive once, and the call ends with `end` and
`call_ended` (`failure` `data_lost`). Either way every key of the call has a TTL afterwards,
and both `/healthz` answer 503 while Redis is down.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from callscribe.twilio_client import stream_call
from shared import keys
from shared.audio import interleave
from shared.redisconn import connect
from tests.e2e.harness import Services, run_services, wait_call_started
from tests.e2e.test_pipeline import history, sim_call
from tests.fakes.deepgram import FakeDeepgram, turns_from_json
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SPEED = 2.0
"""The call is streamed twice as fast as real time (14 s instead of 28 s)."""


async def watch(svc: Services, call_sid: str, first_final: asyncio.Event) -> list[dict[str, Any]]:
    """A /v1/ws client that lists calls and follows ``call_sid`` from its start to ``end``,
    then to ``call_ended``; every message it got (``reconnecting`` notices included)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(120), websockets.connect(f"{svc.gateway_ws}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "list"}))
        await ws.send(json.dumps({"type": "subscribe", "call_sid": call_sid, "since": "0"}))
        ended = call_ended = False
        async for raw in ws:
            msg = json.loads(raw)
            got.append(msg)
            if msg["type"] == "transcript" and msg["is_final"]:
                first_final.set()
            ended = ended or msg["type"] == "end"
            call_ended = call_ended or (
                msg["type"] == "call_ended" and msg["call"]["call_sid"] == call_sid
            )
            if ended and call_ended:
                return got
    raise AssertionError("the watcher's connection closed before the call ended")


async def health(svc: Services) -> tuple[int, int]:
    """The status codes of ingest's and the gateway's ``/healthz``."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        ingest = await http.get(f"http://127.0.0.1:{svc.ingest_port}/healthz")
        gateway = await http.get(f"http://127.0.0.1:{svc.gateway_port}/healthz")
    return ingest.status_code, gateway.status_code


async def keys_without_ttl(redis_url: str, call_sid: str) -> list[bytes]:
    """The call's keys (``cs:{p}:<sid>:*``) that have no expiry; AssertionError when the call
    has no key at all (the check would prove nothing)."""
    r = connect(redis_url)
    try:
        found = await r.keys(f"cs:{{{keys.tag_of(call_sid)}}}:{call_sid}:*")
        assert keys.meta(call_sid).encode() in found, found
        return [k for k in found if await r.ttl(k) < 0]
    finally:
        await r.aclose()


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no_persistence"])
async def test_redis_killed_and_restarted_mid_call_ends_well(
    aof: bool, tmp_path: Path, audio_dir: Path
) -> None:
    """kill -9 of Redis after the first final, 1 s down, restarted: see the module docstring."""
    script = turns_from_json(audio_dir / "call_dentist.json")
    call = sim_call("call_dentist", 50 + aof)
    server = RedisServer(aof=aof)
    server.start()
    try:
        async with FakeDeepgram(script, api_key="k", reference=interleave(call.tracks)) as fake:
            env = {"ASR_ENGINE": "deepgram", "DEEPGRAM_URL": fake.url, "DEEPGRAM_API_KEY": "k"}
            env |= {"LEASE_RENEW_S": "0.3", "CLAIM_IDLE_MS": "1500", "REDIS_SOCKET_TIMEOUT_S": "3"}
            async with run_services(server.url, tmp_path, env) as svc:
                streaming = asyncio.create_task(stream_call(svc.twilio_url, call, speed=SPEED))
                try:
                    await wait_call_started(svc.gateway_ws, call.call_sid, timeout_s=30)
                    first_final = asyncio.Event()
                    watcher = asyncio.create_task(watch(svc, call.call_sid, first_final))
                    async with asyncio.timeout(60):
                        await first_final.wait()
                    server.kill()
                    during = await health(svc)
                    await asyncio.sleep(1.0)  # the outage lasts a moment, as a restart does
                    server.start()
                    async with asyncio.timeout(120):
                        sent = await streaming
                        got = await watcher
                    after = await health(svc)
                except BaseException:
                    print(svc.log_tail())
                    raise
    finally:
        stored = await history(server.url, call.call_sid)
        untimed = await keys_without_ttl(server.url, call.call_sid)
        server.stop()
    assert sent["close_code"] is None, "ingest dropped the Twilio socket"
    assert during == (503, 503), "a /healthz said ok while Redis was down"
    assert after == (200, 200)
    assert untimed == []
    finals = [m for m in got if m["type"] == "transcript" and m["is_final"]]
    texts = [(m["channel"], m["text"]) for m in finals]
    script_texts = [(t.channel, t.text) for t in sorted(script, key=lambda t: (t.end_s, t.channel))]
    assert len({m["id"] for m in finals}) == len(finals), "a final arrived twice"
    errors = [m["code"] for m in got if m["type"] == "error" and m["code"] != "reconnecting"]
    ended = next(m["call"] for m in got if m["type"] == "call_ended")
    if aof:
        assert texts == script_texts, "with AOF every final arrives once"
        assert [(e.channel, e.text) for e in stored] == script_texts
        assert errors == [] and ended["failure"] is None
    else:
        assert len(set(texts)) == len(texts) and texts[-1] == script_texts[-1]
        assert errors == ["data_lost"] and ended["failure"] == "data_lost"
        lost = len(script_texts) - len(stored)
        assert 0 < lost < len(script_texts), "the history is the finals after the loss"
        assert [(e.channel, e.text) for e in stored] == script_texts[lost:]
