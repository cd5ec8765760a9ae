"""The processes of a load run, and their CPU and memory as Linux reports them in ``/proc``.

:class:`Fleet` starts what one run needs (redis-server, the fake Deepgram, then callscribe's
three services or the tutorial server), each as its own process with its own ``/proc`` figures,
and stops them all (SIGTERM, then SIGKILL after ``STOP_GRACE_S``). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 15.0
"""How long a process has to exit after SIGTERM, s."""


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (``/proc/<pid>/stat``); 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), MB; 0.0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Fleet:
    """Named processes of one run (``name → pid``) and how to stop them.

    ``pids`` keeps the start order: ``redis``, ``fake``, then ``ingest``, ``transcriber0``…,
    ``gateway0``… or ``tutorial``. ``loadgen`` (this process) is added by the runner.
    """

    logs: Path
    pids: dict[str, int] = field(default_factory=dict)
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis: RedisServer | None = None
    fake_url: str = ""
    ingest_port: int = 0
    gateway_ports: list[int] = field(default_factory=list)
    tutorial_port: int = 0

    def start_redis(self) -> str:
        """Start redis-server on a free port; its URL."""
        self.redis = RedisServer()
        self.redis.start()
        assert self.redis.proc is not None
        self.pids["redis"] = self.redis.proc.pid
        return self.redis.url

    def start_fake(
        self, api_key: str, interim_every_s: float, final_every_s: float, timeout_s: float = 30
    ) -> str:
        """Start the fake Deepgram in load mode; its ``ws://…/v1/listen`` URL.

        Raises:
            RuntimeError: it did not print its URL within ``timeout_s``.
        """
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen.fake", "--api-key", api_key,
             "--interim-every-s", str(interim_every_s), "--final-every-s", str(final_every_s)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log("fake"),
        )  # fmt: skip
        self._add("fake", proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline().decode().split() if ready else []
        if len(line) != 2 or line[0] != "ready":
            raise RuntimeError(f"fake Deepgram did not start: {self.tail('fake')}")
        self.fake_url = line[1]
        return self.fake_url

    def fake_stats(self) -> dict[str, Any]:
        """The fake's ``GET /stats``."""
        url = self.fake_url.replace("ws://", "http://").replace("/v1/listen", "/stats")
        with urllib.request.urlopen(url, timeout=10) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def start_callscribe(
        self,
        redis_url: str,
        transcribers: int,
        gateways: int,
        max_calls: int,
        startup_s: float = 60,
    ) -> None:
        """Start ingest, ``transcribers`` transcribers and ``gateways`` gateways; wait until healthy."""
        env = {
            **os.environ, "REDIS_URL": redis_url, "DEEPGRAM_URL": self.fake_url,
            "DEEPGRAM_API_KEY": "anything", "ASR_ENGINE": "deepgram", "LOG_LEVEL": "WARNING",
            "MAX_CALLS": str(max_calls), "PYTHONUNBUFFERED": "1",
            # every simulated call and watcher comes from 127.0.0.1, unauthenticated
            "TWILIO_INSECURE": "1", "GATEWAY_AUTH": "none",
            "INGEST_MAX_CONNECTIONS_PER_IP": "1000000", "GATEWAY_MAX_CONNECTIONS_PER_IP": "1000000", "HTTP_MAX_REQUESTS_PER_S": "1000000",
        }  # fmt: skip
        self.ingest_port = free_port()
        self._spawn("ingest", ["-m", "services.ingest", "--host", "127.0.0.1",
                               "--port", str(self.ingest_port)], env)  # fmt: skip
        for i in range(transcribers):
            self._spawn(f"transcriber{i}", ["-m", "services.transcriber"],
                        {**env, "CONSUMER": f"load-transcriber{i}"})  # fmt: skip
        for i in range(gateways):
            port = free_port()
            self.gateway_ports.append(port)
            self._spawn(f"gateway{i}", ["-m", "services.gateway", "--host", "127.0.0.1",
                                        "--port", str(port)], env)  # fmt: skip
        deadline = time.monotonic() + startup_s
        for port in [self.ingest_port, *self.gateway_ports]:
            self._wait(lambda p=port: _http_ok(f"http://127.0.0.1:{p}/healthz"), deadline)
        self._wait(lambda: self._workers(redis_url) >= transcribers, deadline)

    def start_tutorial(self, python: Path, startup_s: float = 30) -> None:
        """Start the tutorial server with ``python`` (its venv), pointed at the fake."""
        self.tutorial_port = free_port()
        env = {
            **os.environ, "TUTORIAL_HOST": "127.0.0.1", "TUTORIAL_PORT": str(self.tutorial_port),
            "TUTORIAL_DEEPGRAM_BASE": self.fake_url.removesuffix("/v1/listen"),
        }  # fmt: skip
        self._spawn("tutorial", [str(ROOT / "benchmarks/baseline/tutorial_server.py")], env, python)
        deadline = time.monotonic() + startup_s
        self._wait(lambda: _tcp_ok(self.tutorial_port), deadline)

    def ingest_health(self) -> dict[str, Any]:
        """Ingest's ``GET /healthz`` (``dropped_frames`` among its fields)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.ingest_port}/healthz", timeout=10
        ) as r:
            data: dict[str, Any] = json.load(r)
        return data

    def stop(self) -> None:
        """Stop every process: SIGTERM all, wait, SIGKILL what is left."""
        for proc in self.popens:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.popens:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self.redis is not None:
            self.redis.stop()

    def tail(self, name: str, lines: int = 20) -> str:
        """The end of process ``name``'s log."""
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])

    def _log(self, name: str) -> IO[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        return (self.logs / f"{name}.log").open("wb")

    def _add(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.popens.append(proc)
        self.pids[name] = proc.pid

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str], python: Path | None = None
    ) -> None:
        with self._log(name) as log:
            proc = subprocess.Popen(
                [str(python or sys.executable), *args], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._add(name, proc)

    def _wait(self, ready: Any, deadline: float) -> None:
        while not ready():
            for name, pid in self.pids.items():
                proc = next((p for p in self.popens if p.pid == pid), None)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError("services not ready in time")
            time.sleep(0.05)

    def _workers(self, redis_url: str) -> int:
        assert self.redis is not None
        with socket.create_connection(("127.0.0.1", self.redis.port), timeout=2) as s:
            s.sendall(b"KEYS cs:worker:*\r\n")
            head = s.recv(64)
        with contextlib.suppress(ValueError):
            return int(head.split(b"\r\n", 1)[0][1:])
        return 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
