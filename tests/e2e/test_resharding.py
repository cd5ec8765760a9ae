"""End to end on a 3-master Redis Cluster: the slot holding a live call moves to another master.

Mid-call (streamed at twice real time), after two finals, the hash slot of the call's partition (its keys, its job, the
partition's shared structures) is migrated to another master with the steps of
``redis-cli --cluster reshard`` while ingest, the transcriber and the gateway keep using it. The
call must finish with every final stored once, in order, and the watcher that followed the whole
call must get each of them exactly once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets
from redis.crc import key_slot

from callscribe.twilio_client import stream_call
from shared import keys
from shared.audio import interleave
from tests.e2e.harness import run_services, wait_call_started
from tests.e2e.test_pipeline import history, sim_call
from tests.fakes.deepgram import FakeDeepgram, turns_from_json
from tests.redis_cluster import RedisCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.mark.parametrize("redis_url", ["cluster"], indirect=True)
async def test_a_slot_moving_mid_call_loses_no_final_and_repeats_none(
    redis_url: str, redis_cluster: RedisCluster, tmp_path: Path, audio_dir: Path
) -> None:
    """Migrate the call's slot after two finals: every final reaches the watcher once, in order."""
    script = turns_from_json(audio_dir / "call_dentist.json")
    call = sim_call("call_dentist", 31)
    slot = key_slot(keys.meta(call.call_sid).encode())
    env = {"LEASE_RENEW_S": "0.5", "READ_BLOCK_MS": "50"}
    async with FakeDeepgram(script, api_key="k", reference=interleave(call.tracks)) as fake:
        env |= {"ASR_ENGINE": "deepgram", "DEEPGRAM_URL": fake.url, "DEEPGRAM_API_KEY": "k"}
        async with run_services(redis_url, tmp_path, env) as svc:
            streaming = asyncio.create_task(stream_call(svc.twilio_url, call, speed=2.0))
            await wait_call_started(svc.gateway_ws, call.call_sid, timeout_s=30)
            finals: list[dict[str, object]] = []
            moved = -1
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
                            if len(finals) == 2 and moved < 0:
                                owner = redis_cluster.owner(slot)
                                to = next(p for p in redis_cluster.ports if p != owner)
                                moved = await asyncio.to_thread(redis_cluster.move_slot, slot, to)
                        elif msg["type"] == "end":
                            break
                await streaming
            except BaseException:
                print(svc.log_tail())
                raise
            gateway_log = svc.logs["gateway"].read_text()
    assert moved > 0, "the call's slot was not moved mid-call"
    # the cluster ended the gateway's sharded subscription: it resubscribed on the new owner
    assert "redis pubsub reconnected" in gateway_log, gateway_log[-2000:]
    stored = await history(redis_url, call.call_sid)
    assert [(e.channel, e.text) for e in stored] == [
        (t.channel, t.text) for t in sorted(script, key=lambda t: (t.end_s, t.channel))
    ]
    assert [m["id"] for m in finals] == [e.id for e in stored]
