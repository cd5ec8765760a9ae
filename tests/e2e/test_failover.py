"""End to end: a transcriber process killed mid-call; another takes the call over.

Two transcriber processes share the calls. Mid-call the one that owns the call gets SIGKILL
(no clean-up, as when a machine dies); the other must claim the call after ``CLAIM_IDLE_MS``,
resume from the dead one's checkpoint, and finish it: every final once, in order, for the
watcher that followed the whole call.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
import websockets

from callscribe.twilio_client import stream_call
from shared import keys
from shared.audio import interleave
from shared.redisconn import connect
from tests.e2e.harness import run_services, wait_call_started
from tests.e2e.test_pipeline import history, sim_call
from tests.fakes.deepgram import FakeDeepgram, turns_from_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def owner_of(redis_url: str, call_sid: str) -> str:
    """The consumer holding the call's pending job."""
    r = connect(redis_url)
    jobs = keys.jobs(keys.tag_of(call_sid))
    try:
        for entry in await r.xpending_range(jobs, keys.JOBS_GROUP, "-", "+", 100):
            fields = (await r.xrange(jobs, entry["message_id"], entry["message_id"]))[0][1]
            if fields[b"call_sid"].decode() == call_sid:
                return str(entry["consumer"].decode())
    finally:
        await r.aclose()
    raise AssertionError("no pending job for the call")


@pytest.mark.parametrize("redis_url", ["single", "cluster"], indirect=True)
async def test_killed_transcriber_hands_the_call_over_without_loss_or_duplicate(
    redis_url: str, tmp_path: Path, audio_dir: Path
) -> None:
    """SIGKILL the owning worker after two finals: the call completes, each final exactly once."""
    script = turns_from_json(audio_dir / "call_dentist.json")
    call = sim_call("call_dentist", 21)
    reference = interleave(call.tracks)
    env = {"CLAIM_IDLE_MS": "1500", "LEASE_RENEW_S": "0.3", "READ_BLOCK_MS": "50"}
    async with FakeDeepgram(script, api_key="k", reference=reference) as fake:
        env |= {"ASR_ENGINE": "deepgram", "DEEPGRAM_URL": fake.url, "DEEPGRAM_API_KEY": "k"}
        async with run_services(redis_url, tmp_path, env, workers=2) as svc:
            streaming = asyncio.create_task(stream_call(svc.twilio_url, call, speed=1.0))
            await wait_call_started(svc.gateway_ws, call.call_sid, timeout_s=30)
            finals: list[dict[str, object]] = []
            killed = ""
            try:
                async with (
                    asyncio.timeout(120),
                    websockets.connect(f"{svc.gateway_ws}/v1/ws") as ws,
                ):
                    sub = {"type": "subscribe", "call_sid": call.call_sid, "since": "0"}
                    await ws.send(json.dumps(sub))
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg["type"] == "transcript" and msg["is_final"]:
                            finals.append(msg)
                            if len(finals) == 2 and not killed:
                                killed = await owner_of(redis_url, call.call_sid)
                                proc = svc.procs[killed.removeprefix("e2e-")]
                                proc.send_signal(signal.SIGKILL)
                        elif msg["type"] == "end":
                            break
                await streaming
            except BaseException:
                print(svc.log_tail())
                raise
            survivor = next(
                n
                for n in svc.procs
                if n.startswith("transcriber") and n != killed.removeprefix("e2e-")
            )
            log = svc.logs[survivor].read_text()
    assert killed, "the call never had two finals"
    assert "call claimed" in log and "taken_over=True" in log, log[-2000:]
    stored = await history(redis_url, call.call_sid)
    assert [(e.channel, e.text) for e in stored] == [
        (t.channel, t.text) for t in sorted(script, key=lambda t: (t.end_s, t.channel))
    ]
    assert [m["id"] for m in finals] == [e.id for e in stored]
