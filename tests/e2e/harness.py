"""Whole-system harness: the three services as separate processes, and watchers of a call.

Used by the end-to-end tests and by ``benchmarks/latency.py``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from shared.redisconn import connect
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Services:
    """Running ingest, transcriber and gateway processes, with their ports and log files."""

    ingest_port: int
    gateway_port: int
    procs: dict[str, asyncio.subprocess.Process]
    logs: dict[str, Path]

    @property
    def twilio_url(self) -> str:
        """``ws://127.0.0.1:<ingest>/twilio``."""
        return f"ws://127.0.0.1:{self.ingest_port}/twilio"

    @property
    def gateway_ws(self) -> str:
        """``ws://127.0.0.1:<gateway>``."""
        return f"ws://127.0.0.1:{self.gateway_port}"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every service's log, for failure messages."""
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)


async def _wait_http(url: str, timeout_s: float, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{url}: process exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not healthy within {timeout_s} s")


async def _wait_worker(redis_url: str, timeout_s: float, proc: asyncio.subprocess.Process) -> None:
    r = connect(redis_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"transcriber exited with {proc.returncode}")
            if [k async for k in r.scan_iter(match="cs:worker:*")]:  # every node of a cluster
                return
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    raise TimeoutError(f"no transcriber heartbeat within {timeout_s} s")


@contextlib.asynccontextmanager
async def run_services(
    redis_url: str, tmp: Path, env: dict[str, str], *, workers: int = 1, startup_s: float = 60.0
) -> AsyncIterator[Services]:
    """Start ingest, ``workers`` transcribers and the gateway as ``python -m services.X``.

    On exit each gets SIGTERM and up to 15 s to stop (then SIGKILL).

    Raises:
        TimeoutError: a service did not become healthy within ``startup_s``.
    """
    ingest_port, gateway_port = free_port(), free_port()
    # without authentication (tests/security/ covers it): calls come from the test, not Twilio
    insecure = {"TWILIO_INSECURE": "1", "GATEWAY_AUTH": "none"}
    base = {**os.environ, **insecure, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", **env}
    if "DEEPGRAM_API_KEY" not in env:
        base.pop("DEEPGRAM_API_KEY", None)
    cmds = {
        "ingest": ["services.ingest", "--host", "127.0.0.1", "--port", str(ingest_port)],
        "gateway": ["services.gateway", "--host", "127.0.0.1", "--port", str(gateway_port)],
    }
    for i in range(workers):
        cmds[f"transcriber{i}"] = ["services.transcriber"]
    procs: dict[str, asyncio.subprocess.Process] = {}
    logs: dict[str, Path] = {}
    try:
        for name, args in cmds.items():
            logs[name] = tmp / f"{name}.log"
            penv = dict(base)
            if name.startswith("transcriber"):
                penv["CONSUMER"] = f"e2e-{name}"
            with logs[name].open("wb") as out:
                procs[name] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    *args,
                    cwd=ROOT,
                    env=penv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        services = Services(ingest_port, gateway_port, procs, logs)
        try:
            await _wait_http(f"http://127.0.0.1:{ingest_port}/healthz", startup_s, procs["ingest"])
            await _wait_http(
                f"http://127.0.0.1:{gateway_port}/healthz", startup_s, procs["gateway"]
            )
            await _wait_worker(redis_url, startup_s, procs["transcriber0"])
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}\n{services.log_tail()}") from None
        yield services
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 5)


@dataclass
class Received:
    """What one watcher got: finals in arrival order, interim count, whether ``end`` came."""

    finals: list[dict[str, Any]] = field(default_factory=list)
    interims: int = 0
    ended: bool = False
    arrival: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


async def wait_call_started(gateway_ws: str, call_sid: str, timeout_s: float) -> None:
    """Return once the gateway pushes ``call_started`` for ``call_sid`` (or lists it live)."""
    async with asyncio.timeout(timeout_s), websockets.connect(f"{gateway_ws}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "list"}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "calls" and any(c["call_sid"] == call_sid for c in msg["calls"]):
                return
            if msg.get("type") == "call_started" and msg["call"]["call_sid"] == call_sid:
                return


async def watch_tutorial_client(gateway_ws: str, call_sid: str, timeout_s: float) -> Received:
    """A tutorial ``/client`` watcher: read the list, send the callSid, collect Results to close."""
    got = Received()
    async with asyncio.timeout(timeout_s), websockets.connect(f"{gateway_ws}/client") as ws:
        listing = json.loads(await ws.recv())
        assert isinstance(listing, list) and call_sid in listing, listing
        await ws.send(call_sid)
        with contextlib.suppress(websockets.ConnectionClosedOK):
            async for raw in ws:
                msg = json.loads(raw)
                assert msg["type"] == "Results", msg
                if msg["is_final"]:
                    got.finals.append(msg)
                    got.arrival.append((time.monotonic(), msg))
                else:
                    got.interims += 1
        got.ended = ws.close_code == 1000
    return got


async def watch_v1(
    gateway_ws: str, call_sid: str, timeout_s: float, *, since: str | None = "0", delay_s: float = 0
) -> Received:
    """A ``/v1/ws`` watcher that subscribes after ``delay_s`` with ``since`` and reads to ``end``."""
    await asyncio.sleep(delay_s)  # joining mid-call is the behaviour under test, not a wait
    got = Received()
    async with asyncio.timeout(timeout_s), websockets.connect(f"{gateway_ws}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "call_sid": call_sid, "since": since}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "transcript":
                if msg["is_final"]:
                    got.finals.append(msg)
                    got.arrival.append((time.monotonic(), msg))
                else:
                    got.interims += 1
                    got.arrival.append((time.monotonic(), msg))
            elif msg["type"] == "end":
                got.ended = True
                break
            elif msg["type"] == "error" and msg["code"] != "reconnecting":
                raise AssertionError(f"gateway error: {msg}")
    return got
