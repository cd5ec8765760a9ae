"""The fake Deepgram in load mode as its own process (so its CPU is measured apart).

``python -m benchmarks.loadgen.fake --api-key K`` prints ``ready ws://127.0.0.1:<port>/v1/listen``
once it listens, then serves until SIGTERM or SIGINT. ``GET /stats`` on the same port reports
each connection's markers heard, finals and interims sent (:meth:`FakeDeepgram.stats`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from tests.fakes.deepgram import FakeDeepgram
from tests.fakes.load_recogniser import LoadScript


async def serve(api_key: str, script: LoadScript) -> None:
    """Serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeDeepgram([], api_key=api_key, load=script, idle_timeout_s=30.0) as dg:
        print("ready", dg.url, flush=True)
        await stop.wait()


def main() -> None:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-key", default="anything")
    parser.add_argument("--interim-every-s", type=float, default=1.0)
    parser.add_argument("--final-every-s", type=float, default=3.0)
    args = parser.parse_args()
    script = LoadScript(args.interim_every_s, args.final_every_s)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.api_key, script))


if __name__ == "__main__":
    main()
