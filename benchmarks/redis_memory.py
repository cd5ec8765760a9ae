"""Redis memory per live call and per retained ended call, and the gaps in calls' audio.

Starts redis-server, the fake Deepgram in load mode (a word a second per channel, a final every
3 s of audio), ingest, one transcriber and one gateway as separate processes
(``benchmarks/loadgen``), plays ``--calls`` Twilio calls of ``--duration`` s started evenly over
``--ramp`` s, and meanwhile:

* samples Redis ``INFO memory`` ``used_memory`` every second; *live* = its median over the
  window where every call is live and has been for ``--warmup`` s (longer than
  ``AUDIO_REPLAY_S`` plus the checkpoint's lag, so trimming has reached its steady state);
* in the middle of that window, ``MEMORY USAGE … SAMPLES 0`` of every live call's keys;
* reads every call's audio stream with XREAD BLOCK as a transcriber does and records the wall
  time between consecutive frames arriving (what ``AUDIO_STALL_S`` must stay well above);

then waits until every call has ended and its audio has expired (``AUDIO_REPLAY_S``; each
expired key is touched so Redis reclaims it now rather than at its active expiry's pace) and
samples ``used_memory`` again, deletes the calls' keys and index entries and samples it once
more: *ended* = what the deletion freed per call, i.e. what a call retained for
``RETENTION_S`` costs (meta, transcript, its share of the history and search index), without
the client buffers and other fixed costs that the difference from the idle server includes.
*Live* per call is both the ``used_memory`` difference from the idle server and the sum of
``MEMORY USAGE`` of its keys; calls per GiB use the larger.

Run: ``.venv/bin/python benchmarks/redis_memory.py --calls 100 --duration 60``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen.calls import LoadCall, plan_calls, play  # noqa: E402
from benchmarks.loadgen.procs import Fleet  # noqa: E402
from shared import keys  # noqa: E402
from shared.redisconn import connect  # noqa: E402

GIB = 1 << 30


async def used_memory(r: Any) -> int:
    """``INFO memory`` ``used_memory``, bytes."""
    return int((await r.info("memory"))["used_memory"])


async def key_sizes(r: Any, sids: list[str]) -> dict[str, list[int]]:
    """``MEMORY USAGE … SAMPLES 0`` (exact) of each call's meta, audio and transcript, bytes."""
    out: dict[str, list[int]] = {"meta": [], "audio": [], "transcript": [], "audio_entries": []}
    for sid in sids:
        for name, key in (("meta", keys.meta(sid)), ("audio", keys.audio(sid)),
                          ("transcript", keys.transcript(sid))):  # fmt: skip
            size = await r.memory_usage(key, samples=0)
            if size:
                out[name].append(int(size))
        out["audio_entries"].append(int(await r.xlen(keys.audio(sid))))
    return out


async def drop_calls(r: Any, sids: list[str]) -> int:
    """Delete the calls' keys and index entries (this run's are the only ones); ``used_memory``
    after, so that what they held is measured without client buffers and other fixed costs."""
    for sid in sids:
        await r.delete(*keys.call_keys(sid))
        await r.zrem(keys.recent(keys.tag_of(sid)), sid)
    words = [k async for k in r.scan_iter(match=keys.word("*", "*"))]
    if words:
        await r.delete(*words)
    return await used_memory(r)


async def active_count(r: Any) -> int:
    """Calls in every partition's active set."""
    return sum([int(await r.scard(keys.active(t))) for t in keys.TAGS])


class GapReader:
    """Reads every started call's audio stream and records the gaps between frame arrivals, s."""

    def __init__(self, redis_url: str) -> None:
        self.r = connect(redis_url)
        self.last_id: dict[str, str] = {}
        self.last_at: dict[str, float] = {}
        self.gaps: list[float] = []

    def add(self, sid: str) -> None:
        """Start reading ``sid``'s audio from its beginning."""
        self.last_id[sid] = "0-0"

    async def run(self) -> None:
        """Read until cancelled."""
        while True:
            if not self.last_id:
                await asyncio.sleep(0.05)
                continue
            streams = {keys.audio(s): i for s, i in self.last_id.items()}
            resp = await self.r.xread(streams, count=100, block=100)
            now = time.monotonic()
            for stream, entries in resp or []:
                sid = stream.decode().split("{", 1)[1].split("}", 1)[0]
                for entry_id, fields in entries:
                    self.last_id[sid] = entry_id.decode()
                    if sid in self.last_at:
                        self.gaps.append(now - self.last_at[sid])
                    self.last_at[sid] = now
                    if b"eof" in fields:
                        del self.last_id[sid]
                        break


async def measure(args: argparse.Namespace, fleet: Fleet, redis_url: str) -> dict[str, Any]:
    """Play the calls and take the samples (see the module docstring)."""
    r = connect(redis_url)
    idle = await used_memory(r)
    calls = plan_calls(args.calls, args.ramp, args.duration, 2.0)
    reader = GapReader(redis_url)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    lo, hi = begin + args.ramp + args.warmup, begin + args.duration
    samples: list[tuple[float, int]] = []
    sizes: dict[str, list[int]] = {}

    async def sampler() -> None:
        nonlocal sizes
        while True:
            now = loop.time()
            samples.append((now, await used_memory(r)))
            if not sizes and now >= (lo + hi) / 2:
                sizes = await key_sizes(r, [c.call_sid for c in calls])
            await asyncio.sleep(1.0)

    def on_start(call: LoadCall) -> None:
        reader.add(call.call_sid)

    tasks = [loop.create_task(sampler()), loop.create_task(reader.run())]
    try:
        await play("127.0.0.1", fleet.ingest_port, calls, on_start)
        deadline = loop.time() + 60
        while await active_count(r) and loop.time() < deadline:  # noqa: ASYNC110 (polls Redis: no event to await)
            await asyncio.sleep(0.5)
        await asyncio.sleep(args.replay_s + 2.0)  # ended calls' audio expires
        for c in calls:  # reclaim expired audio now (Redis's active expiry does it over time)
            await r.exists(keys.audio(c.call_sid))
        ended = await used_memory(r)
        ended_sizes = await key_sizes(r, [c.call_sid for c in calls])
        index = sum([int(await r.memory_usage(k, samples=0) or 0)
                     async for k in r.scan_iter(match=keys.word("*", "*"))])  # fmt: skip
        index += sum([int(await r.memory_usage(keys.recent(t), samples=0) or 0) for t in keys.TAGS])
        left = [await r.ttl(keys.audio(c.call_sid)) for c in calls]
        audio_left = {
            "keys": sum(t != -2 for t in left),
            "ttls": sorted(t for t in left if t != -2),
        }
        freed = ended - await drop_calls(r, [c.call_sid for c in calls])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reader.r.aclose()
        await r.aclose()
    live = statistics.median(m for t, m in samples if lo <= t <= hi)
    live_keys = sum(statistics.median(v) for k, v in sizes.items() if k != "audio_entries" and v)
    gaps = sorted(reader.gaps)
    n = args.calls
    per_live, per_ended = (live - idle) / n, (ended - idle) / n

    def med(values: list[int]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "calls": n, "duration_s": args.duration, "errors": sum(1 for c in calls if c.error),
        "used_memory_idle": idle, "used_memory_live": live, "used_memory_ended": ended,
        "per_live_call_bytes": per_live, "per_live_call_key_bytes": live_keys,
        "per_ended_call_bytes": per_ended, "per_ended_call_freed_bytes": freed / n,
        "live_calls_per_gib": GIB / max(per_live, live_keys),
        "ended_calls_per_gib": GIB / (freed / n),
        "live_key_bytes": {k: med(v) for k, v in sizes.items()},
        "ended_key_bytes": {k: med(v) for k, v in ended_sizes.items()},
        "index_bytes_per_call": index / n,
        "ended_audio_left": audio_left,
        "audio_gaps_s": {"frames": len(gaps), "p50": gaps[len(gaps) // 2] if gaps else None,
                         "p99.9": gaps[int(len(gaps) * 0.999)] if gaps else None,
                         "max": gaps[-1] if gaps else None},
    }  # fmt: skip


def main() -> None:
    """Parse the options, run, print JSON and a summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0, help="s per call")
    p.add_argument("--ramp", type=float, default=10.0, help="s over which calls start")
    p.add_argument("--warmup", type=float, default=20.0, help="s of each call before sampling")
    p.add_argument("--replay-s", type=float, default=10.0, help="AUDIO_REPLAY_S of the run")
    args = p.parse_args()
    if args.duration < args.ramp + args.warmup + 5:
        p.error("--duration must exceed --ramp + --warmup by 5 s or more")
    with tempfile.TemporaryDirectory(prefix="cs-redis-memory-") as logs:
        fleet = Fleet(Path(logs))
        try:
            redis_url = fleet.start_redis()
            fleet.start_fake("anything", 1.0, 3.0)
            fleet.start_callscribe(redis_url, 1, 1, max(2 * args.calls, 100))
            out = asyncio.run(measure(args, fleet, redis_url))
        finally:
            fleet.stop()
    print(json.dumps(out, indent=2))
    print(f"per live call {out['per_live_call_bytes'] / 1024:.0f} KiB "
          f"(its keys {out['per_live_call_key_bytes'] / 1024:.0f} KiB; "
          f"{out['live_calls_per_gib']:.0f} per GiB); per ended call "
          f"{out['per_ended_call_freed_bytes'] / 1024:.1f} KiB "
          f"({out['ended_calls_per_gib']:.0f} per GiB); "
          f"audio gap max {out['audio_gaps_s']['max']:.3f} s", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
