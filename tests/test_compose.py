"""docker-compose.yml and Dockerfile agree with the code: commands, ports, environment, health.

No Docker engine runs here, so each compose service's command is started as a local process
with the compose environment (REDIS_URL pointed at the test redis-server), checked healthy with
the compose healthcheck itself, and stopped with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from callscribe.cli import SERVICES, build_parser
from shared.settings import GatewaySettings, IngestSettings, TranscriberSettings
from shared.settings_doc import env_names
from tests.redis_cluster import node_port
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))
HEALTHY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SETTINGS = {
    "ingest": IngestSettings,
    "transcriber": TranscriberSettings,
    "gateway": GatewaySettings,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


SHELL = {
    "REDIS_PASSWORD": "test-password",
    "TWILIO_AUTH_TOKEN": "test-twilio-token",
    "PUBLIC_URL": "https://ingest.example.com",
    "JWT_SECRET": "test-jwt-secret-of-at-least-32-bytes",
}
"""What an operator's shell (or .env) gives compose: the secrets it requires."""


def _substitute(value: str, shell: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR:?error}`` with ``shell`` as the environment."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if shell.get(name):
            return shell[name]
        assert op == ":-", f"compose would refuse to start: {name} unset ({arg})"
        return arg

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", one, value)


def _env_for(service: dict[str, Any], redis_url: str) -> dict[str, str]:
    """The process environment compose would give ``service`` with a shell environment that
    sets only the required secrets (:data:`SHELL`)."""
    env = {k: v for k, v in os.environ.items() if k not in service["environment"]}
    for name, value in service["environment"].items():
        if value is None:
            continue  # passed through from the shell only when set there
        env[name] = _substitute(str(value), SHELL)
    env["REDIS_URL"] = redis_url
    return env


def test_compose_services_and_policies(compose: dict[str, Any]) -> None:
    """Four services; redis:7 with a ping healthcheck; the app services restart and wait for it."""
    services = compose["services"]
    assert set(services) == {"redis", "ingest", "transcriber", "gateway"}
    assert services["redis"]["image"] == "redis:7"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # requirepass from REDIS_PASSWORD, which redis-cli (the healthcheck) reads as REDISCLI_AUTH
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == command[-1]
    for name in SERVICES:
        svc = services[name]
        assert svc["restart"] == "unless-stopped"
        assert svc["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert svc["command"][0] == name
        assert "healthcheck" in svc
    assert "container_name" not in services["transcriber"]
    assert "ports" not in services["transcriber"]
    assert services["transcriber"]["healthcheck"]["test"] == [
        "CMD",
        "callscribe",
        "transcriber",
        "--check",
    ]


def test_commands_are_callscribe_subcommands(compose: dict[str, Any]) -> None:
    """Every app service's command names a subcommand of the callscribe parser."""
    parser = build_parser()
    for name in SERVICES:
        command = compose["services"][name]["command"][0]
        args, _ = parser.parse_known_args([command])  # an unknown one exits 2
        assert args.command == command


def test_environment_names_are_settings_fields(compose: dict[str, Any]) -> None:
    """Every variable compose passes is a field of that service's settings (or the API key)."""
    required = {
        "REDIS_URL",
        "DEEPGRAM_API_KEY",
        "ASR_ENGINE",
        "TWILIO_AUTH_TOKEN",
        "PUBLIC_URL",
        "FORWARD_TO",
    }
    every_field = {env_names(cls, f)[0] for cls in SETTINGS.values() for f in cls.model_fields}
    for name in SERVICES:
        env = compose["services"][name]["environment"]
        assert required <= set(env), name
        assert set(env) <= every_field, set(env) - every_field
        assert _substitute(env["REDIS_URL"], SHELL) == "redis://:test-password@redis:6379/0"
    own = {env_names(IngestSettings, f)[0] for f in IngestSettings.model_fields}
    assert {"TWILIO_AUTH_TOKEN", "PUBLIC_URL", "FORWARD_TO"} <= own
    assert {"DEEPGRAM_API_KEY", "ASR_ENGINE"} <= {
        f.upper() for f in TranscriberSettings.model_fields
    }


def test_every_setting_reaches_its_service(compose: dict[str, Any]) -> None:
    """Each setting of the README's table (but per-container hosts, ports, CONSUMER) is passed on."""
    per_container = {"INGEST_HOST", "INGEST_PORT", "GATEWAY_HOST", "GATEWAY_PORT", "CONSUMER"}
    for name, cls in SETTINGS.items():
        wanted = {env_names(cls, f)[0] for f in cls.model_fields} - per_container
        passed = set(compose["services"][name]["environment"])
        assert wanted <= passed, (name, sorted(wanted - passed))


def test_ports_agree_with_settings_and_dockerfile(compose: dict[str, Any]) -> None:
    """Published ports, --port, settings defaults and the Dockerfile's EXPOSE are the same."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()
    }
    published = set()
    for name in ("ingest", "gateway"):
        svc = compose["services"][name]
        default = SETTINGS[name]().port
        command = svc["command"]
        assert int(command[command.index("--port") + 1]) == default
        assert command[command.index("--host") + 1] == "0.0.0.0"  # inside the container
        # published on the host's loopback unless the operator says otherwise (README)
        bind = f"{name.upper()}_BIND"
        assert svc["ports"] == [f"${{{bind}:-127.0.0.1}}:{default}:{default}"]
        assert f":{default}/healthz" in " ".join(svc["healthcheck"]["test"])
        published.add(default)
    assert exposed == published == {5000, 8080}
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert 'pip install ".[whisper]"' in dockerfile
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")


def _healthcheck(test: list[str], port: int | None, env: dict[str, str]) -> int:
    argv = list(test[1:])
    argv = [
        CALLSCRIBE if a == "callscribe" else sys.executable if a == "python" else a for a in argv
    ]
    if port is not None:
        argv = [re.sub(r":(5000|8080)/", f":{port}/", a) for a in argv]
    try:
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode
    except subprocess.TimeoutExpired:
        return -1


def test_services_start_healthy_and_stop_on_sigterm(
    compose: dict[str, Any], redis_url: str, tmp_path: Path
) -> None:
    """Each compose command starts with the compose environment, turns healthy, exits 0 on SIGTERM."""
    procs: dict[str, tuple[subprocess.Popen[bytes], int | None, dict[str, str]]] = {}

    def log_of(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")[-2000:]

    try:
        for name in SERVICES:
            svc = compose["services"][name]
            command = list(svc["command"])
            port = None
            if "--port" in command:
                port = free_port()
                command[command.index("--port") + 1] = str(port)
                command += ["--host", "127.0.0.1"]
            env = _env_for(svc, redis_url)
            with (tmp_path / f"{name}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [CALLSCRIBE, *command], env=env, stdout=subprocess.DEVNULL, stderr=log
                )
            procs[name] = (proc, port, env)
        pending = set(procs)
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                proc, port, env = procs[name]
                assert proc.poll() is None, f"{name} exited early: {log_of(name)}"
                test = compose["services"][name]["healthcheck"]["test"]
                if _healthcheck(test, port, env) == 0:
                    pending.discard(name)
            if pending:
                time.sleep(0.2)  # docker's healthcheck is a poll too; each probe is bounded
        assert not pending, f"not healthy within {HEALTHY_TIMEOUT_S} s: {pending}"
        for proc, _, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, (proc, _, _) in procs.items():
            proc.wait(timeout=STOP_TIMEOUT_S)
            assert proc.returncode == 0, f"{name}: {log_of(name)}"
            assert "Traceback" not in log_of(name), name
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_compose_redis_persists_to_a_volume(compose: dict[str, Any]) -> None:
    """Redis runs with AOF fsynced every second on a named volume, so a restart keeps live calls."""
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data"  # the redis image's working directory, where the AOF lives
    assert volume in compose["volumes"]


def test_cluster_override_persists_and_points_every_service_at_the_cluster(tmp_path: Path) -> None:
    """docker-compose.cluster.yml: three nodes in cluster mode with AOF on their own volumes,
    every service's REDIS_URL a ``redis+cluster://`` URL naming the three, and the node command
    one that redis-server accepts (started here on a free port, it answers in cluster mode)."""
    from shared.cluster import is_cluster_url

    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    nodes = [f"redis-{i}" for i in (1, 2, 3)]
    for name in nodes:
        node = cluster["services"][name]
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--appendonly") + 1] == "yes"
        volume, _, target = node["volumes"][0].partition(":")
        assert target == "/data" and volume in cluster["volumes"]
    for name in ("ingest", "transcriber", "gateway"):
        url = _substitute(cluster["services"][name]["environment"]["REDIS_URL"], SHELL)
        assert is_cluster_url(url), url
        assert all(f"{n}:6379" in url for n in nodes), url
    command = [_substitute(arg, SHELL) for arg in cluster["services"]["redis-1"]["command"]]
    port = node_port()  # its cluster bus port (+10000) must be free too
    server = subprocess.Popen(
        [*command, "--port", str(port), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while True:
            info = subprocess.run(
                ["redis-cli", "-p", str(port), "-a", SHELL["REDIS_PASSWORD"], "--no-auth-warning",
                 "cluster", "info"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if "cluster_state" in info.stdout or time.monotonic() > deadline:
                break
            assert server.poll() is None, "redis-server refused the compose node command"
            time.sleep(0.1)  # polling another process: no event to await
        assert "cluster_state" in info.stdout, info.stdout + info.stderr
    finally:
        server.terminate()
        server.wait(timeout=STOP_TIMEOUT_S)
