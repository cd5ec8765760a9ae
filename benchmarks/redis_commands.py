"""Redis commands per call-second, on a single Redis and on a 3-master Redis Cluster.

Starts a redis-server (``--mode single``) or a 3-master cluster (``--mode cluster``, the tests'
:class:`tests.redis_cluster.RedisCluster`), the fake Deepgram, and ingest, a transcriber and the
gateway as separate processes; streams ``call_dentist.wav`` as ``--calls`` concurrent Twilio
calls at real-time pace with one ``/v1/ws`` watcher each. ``CONFIG RESETSTAT`` on every node
once the services are up and idle; ``INFO commandstats`` on every node after the calls ended.
Prints the commands of every node added up, per call-second (calls × the recording's length)
and by command, and how many each node served (a hot spot shows there).

Includes what the idle services do meanwhile (claim reads, heartbeats, pings), so it is an
upper bound of the per-call cost. Run: ``.venv/bin/python benchmarks/redis_commands.py --mode
cluster --calls 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callscribe.twilio_client import stream_call  # noqa: E402
from tests.e2e.harness import run_services, wait_call_started, watch_v1  # noqa: E402
from tests.e2e.test_pipeline import sim_call  # noqa: E402
from tests.fakes.deepgram import FakeDeepgram, turns_from_json  # noqa: E402
from tests.recordings import DATA_DIR  # noqa: E402
from tests.redis_cluster import RedisCluster  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def ask(port: int, command: str) -> str:
    """One inline command to a node on 127.0.0.1; its whole reply as text."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as s:
        s.sendall(command.encode() + b"\r\n")
        chunks = []
        s.settimeout(0.3)
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks).decode(errors="replace")


def commandstats(port: int) -> Counter[str]:
    """``{command: calls}`` from one node's ``INFO commandstats``."""
    out: Counter[str] = Counter()
    for line in ask(port, "INFO commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name.removeprefix("cmdstat_")] = int(rest.split(",")[0].split("=")[1])
    return out


async def measure(url: str, ports: list[int], calls: int) -> tuple[Counter[str], list[int], float]:
    """Run the calls; the commands by name, the total per node, and the call-seconds."""
    script = turns_from_json(DATA_DIR / "call_dentist.json")
    sims = [sim_call("call_dentist", 500 + n) for n in range(calls)]
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeDeepgram(script, api_key="k") as fake:
            env = {"ASR_ENGINE": "deepgram", "DEEPGRAM_URL": fake.url, "DEEPGRAM_API_KEY": "k"}
            async with run_services(url, Path(tmp), env) as svc:
                await asyncio.sleep(1.0)
                for port in ports:
                    ask(port, "CONFIG RESETSTAT")

                async def one(call: object) -> None:
                    stream = asyncio.create_task(stream_call(svc.twilio_url, call, speed=1.0))  # type: ignore[arg-type]
                    await wait_call_started(svc.gateway_ws, call.call_sid, timeout_s=30)  # type: ignore[attr-defined]
                    await watch_v1(svc.gateway_ws, call.call_sid, timeout_s=120, since="0")  # type: ignore[attr-defined]
                    await stream

                async with asyncio.timeout(300):
                    await asyncio.gather(*(one(c) for c in sims))
                per_node = [commandstats(p) for p in ports]
    total: Counter[str] = Counter()
    for stats in per_node:
        total.update(stats)
    seconds = sum(len(c.tracks[0]) / 8000 for c in sims)
    return total, [sum(s.values()) for s in per_node], seconds


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["single", "cluster"], default="single")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "cluster":
        cluster = RedisCluster()
        cluster.start()
        url, ports, stop = cluster.url, cluster.ports, cluster.stop
    else:
        server = RedisServer()
        server.start()
        url, ports, stop = server.url, [server.port], server.stop
    try:
        total, per_node, seconds = asyncio.run(measure(url, ports, args.calls))
    finally:
        stop()
    n = sum(total.values())
    print(f"{args.mode}: {args.calls} calls, {seconds:.0f} call-seconds, {n} commands")
    print(f"commands per call-second: {n / seconds:.1f}; per node: {per_node}")
    for name, count in total.most_common(12):
        print(f"  {name:<28} {count / seconds:7.2f} per call-second")


if __name__ == "__main__":
    main()
