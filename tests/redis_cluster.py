"""A real 3-master Redis Cluster on free loopback ports, started and torn down by the tests.

Three ``redis-server --cluster-enabled yes`` processes, each in its own temporary directory,
joined with ``redis-cli --cluster create`` (no replicas), ready once ``CLUSTER INFO`` says
``cluster_state:ok`` on every node. Every node asks for a password (``requirepass``, as the
compose cluster does), so the tests run the clients' authentication on every connection they
open, the gateway's per-node pub/sub connections included.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.redis_server import free_port

PASSWORD = "cluster-test-password"
"""``requirepass`` and ``masterauth`` of every node."""


def node_port() -> int:
    """A free port whose cluster bus port (+10000) is a valid port and free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisCluster:
    """``start()``, ``stop()``; ``url`` (``redis+cluster://…``) and ``ports`` to reach it.

    Raises:
        RuntimeError: ``redis-server`` or ``redis-cli`` missing, or the cluster did not form
            within ``timeout_s``.
    """

    def __init__(self, masters: int = 3) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (.ci/run installs them)")
        self.server, self.cli = server, cli
        self.ports = [node_port() for _ in range(masters)]
        self.dirs = [Path(tempfile.mkdtemp(prefix="cs-cluster-")) for _ in self.ports]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """``redis+cluster://:<password>@127.0.0.1:<port>,…`` (every node as a startup node)."""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+cluster://:{PASSWORD}@{nodes}"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, create the cluster, wait until every node reports ``ok``."""
        for port, d in zip(self.ports, self.dirs, strict=True):
            self.procs.append(
                subprocess.Popen(
                    [
                        self.server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--requirepass",
                        PASSWORD,
                        "--masterauth",
                        PASSWORD,
                        "--dir",
                        str(d),
                        "--daemonize",
                        "no",
                        "--loglevel",
                        "warning",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            self._wait(lambda p=port: self._ask(p, "PING").startswith("+PONG"), deadline)
        subprocess.run(
            [
                self.cli,
                "-a",
                PASSWORD,
                "--no-auth-warning",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
        )
        for port in self.ports:
            self._wait(lambda p=port: "cluster_state:ok" in self._ask(p, "CLUSTER INFO"), deadline)

    def _wait(self, ready: object, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except OSError:
                pass
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a cluster node exited")
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not form in time")

    @staticmethod
    def _ask(port: int, command: str) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(f"AUTH {PASSWORD}\r\n".encode())
            if not s.recv(4096).startswith(b"+OK"):
                raise OSError("the node refused the password")
            s.sendall(command.encode() + b"\r\n")
            return s.recv(4096).decode(errors="replace")

    def owner(self, slot: int) -> int:
        """The port of the master serving ``slot`` now."""
        client = redis.Redis(port=self.ports[0], password=PASSWORD, socket_timeout=5.0)
        try:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        finally:
            client.close()
        raise RuntimeError(f"slot {slot} has no owner")

    def move_slot(self, slot: int, to_port: int) -> int:
        """Move ``slot`` with its keys to the master on ``to_port`` as ``redis-cli --cluster
        reshard`` does (SETSLOT IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE on every
        master), while clients keep using it; returns the number of keys moved."""
        from_port = self.owner(slot)
        nodes = {p: redis.Redis(port=p, password=PASSWORD, socket_timeout=10.0) for p in self.ports}
        try:
            ids = {p: n.execute_command("CLUSTER MYID").decode() for p, n in nodes.items()}
            src, dst = nodes[from_port], nodes[to_port]
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[from_port])
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
            moved = 0
            while batch := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "AUTH", PASSWORD, "KEYS", *batch
                )
                moved += len(batch)
            for port in (to_port, from_port, *self.ports):
                nodes[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to_port])
            return moved
        finally:
            for n in nodes.values():
                n.close()

    def flush(self) -> None:
        """FLUSHALL on every master."""
        for port in self.ports:
            self._ask(port, "FLUSHALL")

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s) and remove the directories."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = []
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
