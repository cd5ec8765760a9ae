"""Latency from a packet entering ingest to its transcript reaching a client (fake Deepgram).

Starts a redis-server, the fake Deepgram (scripted with the recording's reference turns, no
endpointing delay), and ingest, a transcriber and the gateway as separate processes; streams
``call_dentist.wav`` as ``--calls`` concurrent two-track Twilio calls at real-time pace and
watches each call on ``/v1/ws``. The fake emits a result the moment the audio it covers has
arrived, so for every result::

    latency = arrival at the client − (time the packet at call time ``event.end`` was sent)

which covers ingest's frame and reorder wait, Redis, the transcriber's read, the Deepgram
socket, publishing, the gateway and the client socket. Prints p50/p90/p99/max in ms for
interim and final results. Run: ``.venv/bin/python benchmarks/latency.py --calls 5``.

``--engine whisper`` measures the embedded engine instead: there ``end`` is where the speech
of a final stopped, so a final's latency includes the silence that closes the utterance
(``WHISPER_MIN_SILENCE_MS``) and the decoding; an interim's, the decoding of the open utterance.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callscribe.twilio_client import SimCall, stream_call  # noqa: E402
from shared.audio import pcm16_to_ulaw, read_wav  # noqa: E402
from tests import recordings  # noqa: E402
from tests.e2e.harness import run_services, wait_call_started, watch_v1  # noqa: E402
from tests.fakes.deepgram import FakeDeepgram, turns_from_json  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_call(svc, n: int, tracks: list[bytes], speed: float) -> list[tuple[bool, float]]:
    """Stream one call, watch it live; return (is_final, latency s) per received result."""
    call = SimCall(tracks=tracks, call_sid=f"CAbench{n:027d}")
    stream = asyncio.create_task(stream_call(svc.twilio_url, call, speed=speed))
    await wait_call_started(svc.gateway_ws, call.call_sid, timeout_s=30)
    got = await watch_v1(svc.gateway_ws, call.call_sid, timeout_s=120, since=None)
    sent = await stream
    t0 = sent["t0_monotonic"]
    return [(m["is_final"], at - (t0 + m["end"] / speed)) for at, m in got.arrival]


async def main(calls: int, speed: float, frame_ms: int, engine: str) -> None:
    """Run the pipeline once and print the latency figures."""
    wav = read_wav(recordings.wav("call_dentist"))
    tracks = [pcm16_to_ulaw(wav.samples[:, c]) for c in range(wav.channels)]
    script = turns_from_json(recordings.DATA_DIR / "call_dentist.json")
    redis = RedisServer()
    redis.start()
    try:
        async with FakeDeepgram(script, api_key="k", endpointing_s=0.0) as fake:
            env = {
                "ASR_ENGINE": engine,
                "DEEPGRAM_URL": fake.url,
                "DEEPGRAM_API_KEY": "k",
                "FRAME_MS": str(frame_ms),
                "LOG_LEVEL": "WARNING",
            }
            with tempfile.TemporaryDirectory() as tmp:
                async with run_services(redis.url, Path(tmp), env) as svc:
                    results = await asyncio.gather(
                        *(one_call(svc, i, tracks, speed) for i in range(calls))
                    )
    finally:
        redis.stop()
    print(f"engine={engine} calls={calls} speed={speed} frame_ms={frame_ms}")
    for label, want in (("interim", False), ("final", True)):
        lat = [x * 1000 for r in results for f, x in r if f is want]
        if not lat:
            print(f"{label}: no results")
            continue
        print(
            f"{label:8s} n={len(lat):4d}  p50={percentile(lat, 0.5):6.0f} ms  "
            f"p90={percentile(lat, 0.9):6.0f} ms  p99={percentile(lat, 0.99):6.0f} ms  "
            f"max={max(lat):6.0f} ms  mean={statistics.fmean(lat):6.0f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--frame-ms", type=int, default=100)
    parser.add_argument("--engine", choices=["deepgram", "whisper"], default="deepgram")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.speed, args.frame_ms, args.engine))
