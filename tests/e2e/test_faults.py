"""End to end: Redis freezes mid-call (SIGSTOP for a few seconds, as a stalled server does).

Nothing in the pipeline may crash or lose data: ingest keeps reading Twilio and buffers, the
transcriber and the gateway wait or retry, and once Redis answers again the call's audio is
complete and every final reaches both watchers exactly once, in order.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from callscribe.twilio_client import stream_call
from shared import keys
from shared.redisconn import connect
from tests.e2e.harness import run_services
from tests.e2e.test_pipeline import assert_same_finals, history, sim_call, watch_call
from tests.fakes.deepgram import FakeDeepgram, turns_from_json
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FREEZE_AT_S = 8.0
FREEZE_S = 7.0


async def test_redis_freezing_mid_call_loses_nothing(
    redis_server: RedisServer, redis_url: str, tmp_path: Path, audio_dir: Path
) -> None:
    """Redis stopped for 7 s mid-call: the call's audio is whole and both watchers get every final once."""
    script = turns_from_json(audio_dir / "call_dentist.json")
    call = sim_call("call_dentist", 31)
    assert redis_server.proc is not None
    async with FakeDeepgram(script, api_key="k") as fake:
        env = {"ASR_ENGINE": "deepgram", "DEEPGRAM_URL": fake.url, "DEEPGRAM_API_KEY": "k"}
        env["REDIS_SOCKET_TIMEOUT_S"] = "3"  # the freeze outlasts every Redis timeout: retries
        env["AUDIO_REPLAY_S"] = "600"  # keep the whole call's audio: the test reads it back
        async with run_services(redis_url, tmp_path, env) as svc:
            watcher = asyncio.create_task(watch_call(svc.gateway_ws, call, 2.0))
            streaming = asyncio.create_task(stream_call(svc.twilio_url, call, speed=1.0))
            try:
                await asyncio.sleep(FREEZE_AT_S)  # the fault is timed against the call
                redis_server.proc.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(FREEZE_S)
                finally:
                    redis_server.proc.send_signal(signal.SIGCONT)
                async with asyncio.timeout(120):
                    sent = await streaming
                    tutorial, v1 = await watcher
            except BaseException:
                print(svc.log_tail())
                raise
            log = svc.logs["ingest"].read_text()
    assert sent["close_code"] is None, "ingest dropped the Twilio socket"
    r = connect(redis_url)
    try:
        entries = await r.xrange(keys.audio(call.call_sid))
    finally:
        await r.aclose()
    audio_bytes = sum(len(f.get(b"pcmu", b"")) for _, f in entries)
    padded = sum(-(-len(t) // 160) * 160 for t in call.tracks)  # whole 20 ms packets
    assert audio_bytes == padded, "audio lost while Redis was frozen"
    assert b"eof" in entries[-1][1]
    assert "dropped_frames=0" in log, log[-2000:]
    assert "redis write failed" in log, "the freeze outlasted no write timeout: not tested"
    stored = await history(redis_url, call.call_sid)
    assert_same_finals(tutorial, v1, stored)
    assert [(e.channel, e.text) for e in stored] == [
        (t.channel, t.text) for t in sorted(script, key=lambda t: (t.end_s, t.channel))
    ]
