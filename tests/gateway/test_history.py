"""Call history, search and transcript export over the gateway's REST and /v1/ws."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from services.transcriber.index import index_end, index_final
from shared import keys
from shared.schema import CallMeta, TranscriptEvent
from tests.gateway.conftest import WAIT_S, recv_json

RETENTION_S = 86_400
T0 = time.time() - 3600  # an hour ago


async def write_call(
    r: aioredis.Redis,
    sid: str,
    started_at: float,
    finals: list[tuple[int, float, str]],
    *,
    status: str = "ended",
    number: str = "+15550001111",
    failure: str | None = None,
) -> list[str]:
    """A call as the transcriber leaves it: meta, finals (channel, start, text) with the index
    written by the transcriber's own functions, and (when ended) its end; the finals' ids."""
    meta = CallMeta(
        call_sid=sid, stream_sid="MZ" + sid, account_sid="AC1", started_at=started_at,
        status=status, custom_parameters={"Direction": "inbound"},
        ended_at=started_at + 30 if status == "ended" else None, failure=failure,
        **{"from": number, "to": "+15550002222"},
    )  # fmt: skip
    await r.hset(keys.meta(sid), mapping=meta.to_redis())
    if status != "ended":
        await r.sadd(keys.active(keys.tag_of(sid)), sid)
    ids = []
    for seg, (channel, start, text) in enumerate(finals):
        event = TranscriptEvent(
            call_sid=sid, segment=seg, channel=channel, speaker=("caller", "callee")[channel],
            is_final=True, start=start, end=start + 2.0, text=text,
        )  # fmt: skip
        async with r.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.transcript(sid), event.to_history())
            index_final(pipe, sid, started_at, text, RETENTION_S)
            ids.append((await pipe.execute())[0].decode())
    if status == "ended":
        async with r.pipeline(transaction=True) as pipe:
            index_end(pipe, sid, started_at, time.time(), RETENTION_S)
            await pipe.execute()
    return ids


async def seed(r: aioredis.Redis) -> None:
    """Three ended calls (one failed), one live, one queued, one too old for the retention."""
    await write_call(r, "CAdentist", T0, [(1, 0.0, "Good morning, Bright Smile Dental."),
                                          (0, 5.0, "I'd like a cleaning next week.")])  # fmt: skip
    await write_call(r, "CAorder", T0 + 60, [(0, 1.0, "Where is my order?")], number="+14155550199")
    await write_call(r, "CAfailed", T0 + 120, [], failure="asr_failed")
    await write_call(r, "CAlive", T0 + 180, [(0, 0.0, "A cleaning please")], status="live")
    await write_call(r, "CAqueued", T0 + 240, [], status="queued")
    await write_call(r, "CAold", time.time() - 2 * RETENTION_S, [(0, 0.0, "cleaning")])


async def get(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    reply = await client.get(path, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def test_history_lists_recent_calls_with_filters_search_and_paging(
    gateway, redis: aioredis.Redis
) -> None:
    """Queued, live and ended calls newest first with numbers, ISO times, duration, finals, status,
    failure; filtered by status, number, time and words; paged by cursor; old calls left out."""
    await seed(redis)
    async with (
        gateway() as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client,
    ):
        plain = await get(client, "/v1/calls")  # unchanged: live and queued calls, a list
        assert [c["call_sid"] for c in plain] == ["CAlive", "CAqueued"]

        page = await get(client, "/v1/calls", limit=10)
        assert page["type"] == "history_page"
        sids = [c["call_sid"] for c in page["calls"]]
        assert sids == ["CAqueued", "CAlive", "CAfailed", "CAorder", "CAdentist"]
        dentist = page["calls"][-1]
        assert dentist["from"] == "+15550001111" and dentist["to"] == "+15550002222"
        assert dentist["direction"] == "inbound" and dentist["finals"] == 2
        assert dentist["duration_s"] == 30.0 and dentist["started"].endswith("+00:00")
        assert page["calls"][2]["failure"] == "asr_failed"
        assert page["next_cursor"] is None

        ended = await get(client, "/v1/calls", status="ended")
        assert [c["call_sid"] for c in ended["calls"]] == ["CAfailed", "CAorder", "CAdentist"]
        by_number = await get(client, "/v1/calls", number="415 555")
        assert [c["call_sid"] for c in by_number["calls"]] == ["CAorder"]
        found = await get(client, "/v1/calls", q="Cleaning")
        assert [c["call_sid"] for c in found["calls"]] == ["CAlive", "CAdentist"]
        both = await get(client, "/v1/calls", q="cleaning next week")
        assert [c["call_sid"] for c in both["calls"]] == ["CAdentist"]
        iso_from = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 30))
        window = await get(client, "/v1/calls", **{"from": iso_from, "to": str(T0 + 150)})
        assert [c["call_sid"] for c in window["calls"]] == ["CAfailed", "CAorder"]

        seen, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = await get(client, "/v1/calls", **params)
            seen += [c["call_sid"] for c in page["calls"]]
            if not (cursor := page["next_cursor"]):
                break
        assert seen == sids

        bad = await client.get("/v1/calls", params={"from": "yesterday"})
        assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
        bad = await client.get("/v1/calls", params={"status": "lost"})
        assert bad.status_code == 400


async def test_history_over_v1_ws(gateway, redis: aioredis.Redis) -> None:
    """`{"type": "history", "q": …}` is answered with a history_page; a bad cursor is an error."""
    await seed(redis)
    async with gateway() as port, connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "history", "q": "order", "status": "ended"}))
        page = await recv_json(ws)
        assert page["type"] == "history_page"
        assert [c["call_sid"] for c in page["calls"]] == ["CAorder"]
        await ws.send(json.dumps({"type": "history", "cursor": "nonsense"}))
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "bad_request")


async def test_transcript_exports(gateway, redis: aioredis.Redis) -> None:
    """txt, json, vtt and srt: speakers, call-relative and wall-clock times; a bad format is 400."""
    started = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    await write_call(redis, "CAx", started, [(1, 0.0, "Good morning."), (0, 65.25, "Hi <there>.")])
    async with (
        gateway() as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client,
    ):
        replies = {
            fmt: await client.get("/v1/calls/CAx/transcript", params={"format": fmt})
            for fmt in ("txt", "json", "vtt", "srt")
        }
        bad = await client.get("/v1/calls/CAx/transcript", params={"format": "doc"})
    assert bad.status_code == 400
    for fmt, reply in replies.items():
        assert reply.status_code == 200, (fmt, reply.text)
        assert f'filename="CAx.{fmt}"' in reply.headers["content-disposition"]
    txt = replies["txt"].text
    assert "from +15550001111 to +15550002222 (inbound)" in txt
    assert "[00:00] 08:00:00Z callee: Good morning." in txt
    assert "[01:05] 08:01:05Z caller: Hi <there>." in txt
    vtt = replies["vtt"].text
    assert vtt.startswith("WEBVTT\n")
    assert "00:01:05.250 --> 00:01:07.250\n<v caller>Hi &lt;there&gt;.</v>" in vtt
    srt = replies["srt"].text
    assert srt.startswith(
        "1\n00:00:00,000 --> 00:00:02,000\ncallee: Good morning. [2027-01-15T08:00:00.000+00:00]"
    )
    assert "\n2\n00:01:05,250 --> 00:01:07,250\ncaller: Hi <there>." in srt
    body = replies["json"].json()
    assert body["call"]["call_sid"] == "CAx" and body["call"]["finals"] == 2
    assert body["finals"][1]["wall"] == "2027-01-15T08:01:05.250+00:00"
    assert replies["vtt"].headers["content-type"].startswith("text/vtt")


async def test_cli_calls_and_transcript(gateway, redis: aioredis.Redis) -> None:
    """`callscribe calls -q …` lists the matching calls; `callscribe transcript SID --format srt`
    prints the SRT; an unknown call is exit 1 with one line."""
    import asyncio
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).with_name("callscribe"))
    await seed(redis)

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            cli, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode(), err.decode()

    async with gateway() as port:
        gw = f"http://127.0.0.1:{port}"
        status, out, _ = await run("calls", "--gateway", gw, "-q", "cleaning")
        lines = out.splitlines()
        assert status == 0 and len(lines) == 2
        assert "live" in lines[0] and "CAlive" in lines[0]
        assert "ended" in lines[1] and "+15550001111 → +15550002222" in lines[1]
        status, out, _ = await run("calls", "--gateway", gw, "--status", "ended")
        assert "! asr_failed" in out
        status, out, _ = await run("transcript", "CAdentist", "--gateway", gw, "--format", "srt")
        assert status == 0 and out.startswith("1\n00:00:00,000 --> 00:00:02,000\ncallee: Good")
        status, _, err = await run("transcript", "CAnone", "--gateway", gw)
        assert status == 1 and err.startswith("callscribe transcript: ") and "no such call" in err


async def test_history_follows_the_token_scope_before_paging(
    gateway, redis: aioredis.Redis
) -> None:
    """A token for one number pages through its own calls only: the newer calls of other
    numbers do not eat its page (a page of one is its newest call, then the next), over REST and
    /v1/ws; without ``history`` ended calls are hidden and searching is refused (403)."""
    from services.gateway.auth import Scope, mint

    secret = "history-secret-0123456789abcdef0123"
    mine = "+14155550199"
    await write_call(redis, "CAmine1", T0, [(0, 0.0, "first")], number=mine)
    await write_call(redis, "CAmine2", T0 + 60, [(0, 0.0, "second")], number=mine)
    for i in range(5):  # newer calls of another number
        await write_call(redis, f"CAother{i}", T0 + 120 + i, [(0, 0.0, "other")])
    scoped = mint(secret, scope=Scope.NUMBERS, numbers=[mine], history=True)
    live_only = mint(secret, scope=Scope.NUMBERS, numbers=[mine])
    async with gateway(gateway_auth="jwt", jwt_secret=secret) as port:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {scoped}"}
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=WAIT_S) as client:
            first = await get(client, "/v1/calls", limit=1)
            assert [c["call_sid"] for c in first["calls"]] == ["CAmine2"]
            second = await get(client, "/v1/calls", limit=1, cursor=first["next_cursor"])
            assert [c["call_sid"] for c in second["calls"]] == ["CAmine1"]
            found = await get(client, "/v1/calls", q="other")
            assert found["calls"] == []
        async with connect(f"ws://127.0.0.1:{port}/v1/ws?token={scoped}") as ws:
            await ws.send(json.dumps({"type": "history", "limit": 1}))
            page = await recv_json(ws)
            assert [c["call_sid"] for c in page["calls"]] == ["CAmine2"]
        auth = {"Authorization": f"Bearer {live_only}"}
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=WAIT_S) as client:
            assert (await get(client, "/v1/calls", status="ended"))["calls"] == []
            refused = await client.get("/v1/calls", params={"q": "first"})
            assert refused.status_code == 403
