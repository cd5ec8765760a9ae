"""How much CPU ingest spends per Twilio message, and how many messages a second it absorbs.

Starts a redis-server and ingest as a separate process, then streams ``--calls`` concurrent
two-track Twilio calls (``call_dentist.wav``, 100 media messages per call-second) as fast as the
sender can (or at ``--speed``), from ``--senders`` client processes. Prints the messages sent, the wall time, and
ingest's own CPU time (from ``/proc``, so the senders' CPU on the same machine does not count):
CPU-µs per message is the figure that says how many calls one ingest core carries
(a call is 100 messages a second). Run: ``.venv/bin/python benchmarks/ingest_throughput.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callscribe.twilio_client import SimCall, stream_call  # noqa: E402
from shared import keys  # noqa: E402
from shared.audio import pcm16_to_ulaw, read_wav  # noqa: E402
from shared.redisconn import connect  # noqa: E402
from tests import recordings  # noqa: E402
from tests.redis_server import RedisServer, free_port  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sender(url: str, calls: int, first: int, speed: float) -> int:
    """Stream ``calls`` calls concurrently at ``speed`` (0 = as fast as possible); messages sent."""
    wav = read_wav(recordings.wav("call_dentist"))
    tracks = [pcm16_to_ulaw(wav.samples[:, c]) for c in range(wav.channels)]
    sims = [SimCall(tracks=tracks, call_sid=f"CAthru{first + i:028d}") for i in range(calls)]
    results = await asyncio.gather(*(stream_call(url, s, speed=speed) for s in sims))
    return sum(r["messages"] for r in results)


def run_sender(url: str, calls: int, first: int, speed: float) -> subprocess.Popen[str]:
    """One sender process (so the senders do not share ingest's core budget with this one)."""
    code = (
        f"import asyncio, sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from benchmarks.ingest_throughput import sender; "
        f"print(asyncio.run(sender({url!r}, {calls}, {first}, {speed!r})))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


async def wait_written(redis_url: str, sids: list[str], timeout_s: float) -> int:
    """Until every call's eof is in Redis; the audio entries written in all."""
    r = connect(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = [await r.xrevrange(keys.audio(s), count=1) for s in sids]
            if all(x and b"eof" in x[0][1] for x in last):
                return sum([await r.xlen(keys.audio(s)) for s in sids])
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    raise TimeoutError("ingest did not write every eof")


def main(calls: int, senders: int, speed: float) -> None:
    """Run once and print the figures."""
    redis = RedisServer()
    redis.start()
    port = free_port()
    # The senders speak no Twilio signature: TWILIO_INSECURE is the explicit opt-out.
    env = {**os.environ, "REDIS_URL": redis.url, "LOG_LEVEL": "ERROR", "TWILIO_INSECURE": "1"}
    ingest = subprocess.Popen(
        [sys.executable, "-m", "services.ingest", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        url = f"ws://127.0.0.1:{port}/twilio"
        deadline = time.monotonic() + 20
        while True:
            try:
                import urllib.request

                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cpu0, t0 = cpu_s(ingest.pid), time.monotonic()
        per = [calls // senders + (1 if i < calls % senders else 0) for i in range(senders)]
        firsts = [sum(per[:i]) for i in range(senders)]
        procs = [run_sender(url, n, f, speed) for n, f in zip(per, firsts, strict=True) if n]
        sent = sum(int(p.communicate(timeout=600)[0].strip()) for p in procs)
        sids = [f"CAthru{i:028d}" for i in range(calls)]
        entries = asyncio.run(wait_written(redis.url, sids, 120))
        wall, cpu = time.monotonic() - t0, cpu_s(ingest.pid) - cpu0
    finally:
        ingest.terminate()
        ingest.wait(10)
        redis.stop()
    expected = calls * (round(27.869 * 10) + 1)
    print(
        f"calls={calls} senders={senders} speed={speed} messages={sent} "
        f"audio entries={entries} of {expected} ({expected - entries} frames dropped)"
    )
    print(f"wall={wall:.2f} s  ingest cpu={cpu:.2f} s  ({sent / wall:,.0f} messages/s absorbed)")
    print(
        f"ingest cost={cpu / sent * 1e6:.1f} CPU-µs per message  "
        f"= {sent / cpu:,.0f} messages per CPU-second = {sent / cpu / 100:,.0f} live calls per core"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--speed", type=float, default=0, help="1 = real time, 0 = flat out")
    args = parser.parse_args()
    main(args.calls, args.senders, args.speed)
