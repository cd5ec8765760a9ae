"""One load run of one system (``callscribe`` or ``tutorial``): start, load, measure, stop.

Each run starts its processes afresh (redis-server, the fake Deepgram, the services or the
tutorial), lets them idle 1 s (RSS *idle*), plays the calls with their watchers from this
process, samples every process's RSS twice a second (*steady* = median while every call is
live, or over the middle third of the load when calls do not overlap that long), then, 2 s
after the last watcher is done, reads RSS *after*, ingest's ``dropped_frames`` and the fake's
counts, and stops everything. CPU is each process's CPU time over the load (first call start
to last watcher done) divided by the call-seconds played.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.loadgen.calls import LoadCall, plan_calls, play
from benchmarks.loadgen.procs import Fleet, cpu_s, rss_mb
from benchmarks.loadgen.report import figures, steady
from benchmarks.loadgen.watchers import Watcher, watch

TUTORIAL_API_KEY = "INSERT_YOUR_DEEPGRAM_API_KEY"
"""The tutorial's placeholder key, left as published: its fake accepts it."""

WATCH_GRACE_S = 30.0
"""How long after its call's last packet a watcher may still wait for the end, s."""


@dataclass(frozen=True)
class RunConfig:
    """A run's load and topology (durations in s)."""

    calls: int
    watchers: int
    duration_s: float = 40.0
    ramp_s: float = 10.0
    transcribers: int = 1
    gateways: int = 1
    client_share: float = 0.5
    marker_every_s: float = 2.0
    max_calls: int = 0
    interim_every_s: float = 1.0
    final_every_s: float = 3.0
    open_timeout_s: float = 10.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


@dataclass
class _Load:
    """What playing the load recorded (loop times, CPU s, RSS samples ``(time, MB)``)."""

    calls: list[LoadCall]
    watchers: list[Watcher]
    begin: float
    end: float
    cpu: dict[str, float]
    rss_samples: dict[str, list[tuple[float, float]]]
    late_ms: list[float]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found]  # optional: cheaper loop if installed

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.new_event_loop()


def run_system(
    cfg: RunConfig, system: str, logs: Path, tutorial_python: Path | None = None
) -> dict[str, Any]:
    """Run ``cfg`` against ``system``; its figures (:func:`benchmarks.loadgen.report.figures`)."""
    fleet = Fleet(logs / system)
    try:
        if system == "callscribe":
            redis_url = fleet.start_redis()
            fleet.start_fake("anything", cfg.interim_every_s, cfg.final_every_s)
            max_calls = cfg.max_calls or max(cfg.calls * 2, 100)
            fleet.start_callscribe(redis_url, cfg.transcribers, cfg.gateways, max_calls)
            twilio_port, servers = fleet.ingest_port, fleet.gateway_ports
        else:
            assert tutorial_python is not None
            fleet.start_fake(TUTORIAL_API_KEY, cfg.interim_every_s, cfg.final_every_s)
            fleet.start_tutorial(tutorial_python)
            twilio_port, servers = fleet.tutorial_port, [fleet.tutorial_port]
        fleet.pids["loadgen"] = os.getpid()
        time.sleep(1.0)
        idle = {n: rss_mb(p) for n, p in fleet.pids.items()}
        loop = _new_loop()
        try:
            load = loop.run_until_complete(_drive(cfg, system, fleet, twilio_port, servers))
        finally:
            loop.close()
        time.sleep(2.0)
        after = {n: rss_mb(p) for n, p in fleet.pids.items()}
        dropped = fleet.ingest_health()["dropped_frames"] if system == "callscribe" else None
        stats = fleet.fake_stats()
    finally:
        fleet.stop()
    begin, end = load.begin, load.end
    lo, hi = begin + cfg.ramp_s, begin + cfg.duration_s
    if hi - lo < 1.0:
        lo, hi = begin + (end - begin) / 3, begin + 2 * (end - begin) / 3
    rss = {
        n: {"idle": idle[n], "steady": steady(load.rss_samples[n], lo, hi), "after": after[n]}
        for n in fleet.pids
    }
    fig = figures(
        calls=load.calls, watchers=load.watchers, begin=begin, load_s=cfg.ramp_s + cfg.duration_s,
        call_seconds=cfg.calls * cfg.duration_s, cpu=load.cpu, rss=rss, fake_stats=stats,
        frames_dropped=dropped, tick_late_ms=load.late_ms,
    )  # fmt: skip
    fig["system"] = system
    fig["config"] = cfg.as_dict()
    return fig


async def _drive(
    cfg: RunConfig, system: str, fleet: Fleet, twilio_port: int, servers: list[int]
) -> _Load:
    """Play the load from this process."""
    loop = asyncio.get_running_loop()
    calls = plan_calls(cfg.calls, cfg.ramp_s, cfg.duration_s, cfg.marker_every_s)
    watchers: list[Watcher] = []
    tasks: set[asyncio.Task[None]] = set()
    n_client = round(cfg.watchers * cfg.client_share) if system == "callscribe" else cfg.watchers
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in fleet.pids}

    def on_start(call: LoadCall) -> None:
        until = loop.time() + cfg.duration_s + WATCH_GRACE_S
        for j in range(cfg.watchers):
            gateway = (call.index * cfg.watchers + j) % len(servers)
            w = Watcher(call.index, "client" if j < n_client else "v1", gateway)
            watchers.append(w)
            task = loop.create_task(
                watch(w, "127.0.0.1", servers[gateway], call.call_sid, until=until,
                      open_timeout_s=cfg.open_timeout_s)
            )  # fmt: skip
            tasks.add(task)

    async def sampler() -> None:
        while True:
            now = loop.time()
            for n, pid in fleet.pids.items():
                samples[n].append((now, rss_mb(pid)))
            await asyncio.sleep(0.5)

    cpu0 = {n: cpu_s(p) for n, p in fleet.pids.items()}
    begin = loop.time()
    sampling = loop.create_task(sampler())
    try:
        late_ms = await play(
            "127.0.0.1", twilio_port, calls, on_start, open_timeout_s=cfg.open_timeout_s
        )
        if tasks:
            await asyncio.wait(tasks)
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    end = loop.time()
    cpu = {n: cpu_s(p) - cpu0[n] for n, p in fleet.pids.items()}
    return _Load(calls, watchers, begin, end, cpu, samples, late_ms)
