"""Misconfiguration and CLI defects (issue 11, item 5): one clear line and a non-zero exit each."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.deepgram import FakeDeepgram
from tests.redis_server import free_port

CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))
WAIT_S = 30.0


def _env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ASR_ENGINE", "DEEPGRAM_API_KEY", "PORT", "HOST", "GATEWAY_PORT", "INGEST_PORT", "GATEWAY_HOST", "INGEST_HOST", "LOG_LEVEL", "REDIS_URL")
    }
    # these tests are about configuration errors, not security: run the services open
    insecure = {"GATEWAY_AUTH": "none", "TWILIO_INSECURE": "true"}
    return {**base, **insecure, **extra}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CALLSCRIBE, *args], capture_output=True, text=True, timeout=WAIT_S, env=_env(**env)
    )


def _one_line(done: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("service", "env", "names"),
    [
        ("transcriber", {"ASR_ENGINE": "bogus"}, "ASR_ENGINE='bogus'"),
        ("gateway", {"GATEWAY_PORT": "abc"}, "GATEWAY_PORT='abc'"),
        ("gateway", {"PORT": "abc"}, "PORT='abc'"),  # the old name, still read
        ("ingest", {"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud'"),
        ("ingest", {"PUBLIC_URL": "abc.example"}, "PUBLIC_URL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    service: str, env: dict[str, str], names: str
) -> None:
    """ASR_ENGINE=bogus, GATEWAY_PORT=abc…: `callscribe <service>: VAR='value': why`, exit 2, no traceback."""
    done = _run(service, **env)
    assert done.returncode == 2
    assert names in _one_line(done, f"callscribe {service}: ")


def test_deepgram_without_a_key_is_fatal() -> None:
    """ASR_ENGINE=deepgram and no DEEPGRAM_API_KEY: one line naming the key, exit 2."""
    done = _run("transcriber", ASR_ENGINE="deepgram")
    assert done.returncode == 2
    assert "DEEPGRAM_API_KEY" in _one_line(done, "callscribe transcriber: ")


async def test_deepgram_refusing_the_key_is_fatal(redis_url: str) -> None:
    """The start-up probe gets 401: one line saying the key is refused, exit 2, before serving."""
    async with FakeDeepgram([], api_key="the-right-key") as fake:
        done = await asyncio.to_thread(
            _run,
            "transcriber",
            ASR_ENGINE="deepgram",
            DEEPGRAM_API_KEY="wrong",
            DEEPGRAM_URL=fake.url,
            REDIS_URL=redis_url,
        )
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("callscribe transcriber: Deepgram refused DEEPGRAM_API_KEY (HTTP 401")
    assert "wrong" not in done.stderr and "Traceback" not in done.stderr


async def test_unreachable_deepgram_warns_once_and_fails_the_check(redis_url: str) -> None:
    """DEEPGRAM_URL on a closed port: one loud warning naming it; the worker runs but --check is 1."""
    env = _env(
        ASR_ENGINE="deepgram",
        DEEPGRAM_API_KEY="k",
        DEEPGRAM_URL=f"ws://127.0.0.1:{free_port()}/v1/listen",
        REDIS_URL=redis_url,
        CONSUMER="probe-test",
        LEASE_RENEW_S="0.2",
    )
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "transcriber", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        while "worker started" not in (lines[-1] if lines else ""):
            lines.append((await asyncio.wait_for(proc.stderr.readline(), WAIT_S)).decode())
        check = await asyncio.create_subprocess_exec(
            CALLSCRIBE, "transcriber", "--check", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, check_err = await asyncio.wait_for(check.communicate(), WAIT_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), WAIT_S)
    warnings = [line for line in lines if "DEEPGRAM UNREACHABLE" in line]
    assert len(warnings) == 1 and "deepgram_url=ws://127.0.0.1:" in warnings[0]
    assert check.returncode == 1, check_err.decode()
    assert b"unhealthy" in check_err


@pytest.mark.parametrize(
    ("service", "listen"),
    [
        pytest.param("gateway", {"GATEWAY_PORT": "0", "GATEWAY_HOST": "127.0.0.1"}, id="gateway"),
        pytest.param("ingest", {"INGEST_PORT": "0", "INGEST_HOST": "127.0.0.1"}, id="ingest"),
        # the default engine, whisper, loads its model with the first call: none comes
        pytest.param("transcriber", {"METRICS_PORT": "0"}, id="transcriber"),
    ],
)
async def test_unreachable_redis_is_one_warning_naming_the_url_masked(
    service: str, listen: dict[str, str]
) -> None:
    """A dead Redis at start: one REDIS UNREACHABLE line with the URL, password masked; no flood."""
    env = _env(REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0", **listen)
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, service, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        first = (await asyncio.wait_for(proc.stderr.readline(), WAIT_S)).decode()
        while "REDIS UNREACHABLE" not in first:
            line = await asyncio.wait_for(proc.stderr.readline(), WAIT_S)
            assert line, f"the {service} exited without the warning: {first}"
            first = line.decode()
        # what an outage of a few seconds prints (the probe retries every 2 s): one line
        await asyncio.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), WAIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = first + rest.decode()
    assert f"service={service} redis_url=redis://:***@127.0.0.1:" in first
    assert "hunter2" not in text
    assert text.count("REDIS UNREACHABLE") == 1
    assert sum("level=warning" in line for line in text.splitlines()) <= 3, text
    assert proc.returncode == 0, text  # it kept running, and stopped cleanly on SIGTERM


def test_a_busy_port_is_one_line_and_exit_1(redis_url: str) -> None:
    """ingest and gateway on a port already taken: `cannot listen on …: address already in use`."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for service in ("ingest", "gateway"):
            done = _run(
                "--log-level", "ERROR", service, "--host", "127.0.0.1", "--port", str(port),
                REDIS_URL=redis_url,
            )  # fmt: skip
            assert done.returncode == 1, done.stderr
            line = _one_line(done, f"callscribe {service}: cannot listen on 127.0.0.1:{port}")
            assert "address already in use" in line


async def test_check_reflects_whether_the_gateway_can_serve(redis_url: str) -> None:
    """`gateway --check`: 0 against a running gateway with Redis, 1 with one line when none listens."""
    port = free_port()
    env = _env(REDIS_URL=redis_url)
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, "--log-level", "ERROR", "gateway", "--host", "127.0.0.1", "--port", str(port),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while True:
            done = await asyncio.to_thread(_run, "gateway", "--check", "--port", str(port), **env)
            if done.returncode == 0 or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0
    assert err == b"", err  # --log-level ERROR before the subcommand quiets the service
    done = await asyncio.to_thread(_run, "gateway", "--check", "--port", str(port), **env)
    assert done.returncode == 1
    _one_line(done, "callscribe gateway: unhealthy: ")


LISTENING = re.compile(r"msg=listening service=\w+ host=\S+ port=(\d+)")


async def _serving(service: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    """Start ``callscribe <service> --port 0``; return it and its port once it logs ``listening``."""
    proc = await asyncio.create_subprocess_exec(
        CALLSCRIBE, service, "--host", "127.0.0.1", "--port", "0",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        line = ""
        while (listening := LISTENING.search(line)) is None:
            raw = await asyncio.wait_for(proc.stderr.readline(), WAIT_S)
            assert raw, f"{service} exited before listening"
            line = raw.decode()
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, int(listening.group(1))


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), WAIT_S)


async def test_check_reflects_whether_ingest_can_serve(redis_url: str) -> None:
    """`ingest --check`: 0 against a running ingest whose Redis answers; 1 with one line when
    its Redis does not (/healthz 503), and when none listens."""
    up, down = _env(REDIS_URL=redis_url), _env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    def check(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return _run("ingest", "--check", "--port", str(port), **env)

    healthy, healthy_port = await _serving("ingest", up)
    try:
        blind, blind_port = await _serving("ingest", down)
        try:
            done = await asyncio.to_thread(check, healthy_port, up)
            assert (done.returncode, done.stderr) == (0, "")
            done = await asyncio.to_thread(check, blind_port, down)
            assert done.returncode == 1
            assert "HTTP 503" in _one_line(done, "callscribe ingest: unhealthy: ")
        finally:
            await _stop(blind)
    finally:
        await _stop(healthy)
    assert healthy.returncode == 0 and blind.returncode == 0
    done = await asyncio.to_thread(check, healthy_port, up)
    assert done.returncode == 1
    _one_line(done, f"callscribe ingest: unhealthy: http://127.0.0.1:{healthy_port}/healthz: ")


def test_help_version_and_prog_names() -> None:
    """`ingest --help` says `callscribe ingest`; no RST backticks in any help; --version."""
    done = _run("--version")
    assert done.returncode == 0 and done.stdout.startswith("callscribe ")
    for command in ("ingest", "transcriber", "gateway", "simulate", "watch", "demo"):
        done = _run(command, "--help")
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.startswith(f"usage: callscribe {command}"), done.stdout
        assert "``" not in done.stdout and "`" not in done.stdout, (command, done.stdout)
    top = _run("--help")
    assert "`" not in top.stdout and "LOG_LEVEL" in top.stdout


def test_bad_log_level_and_stray_arguments_are_usage_errors() -> None:
    """`--log-level LOUD` and arguments a tool does not take: exit 2, no traceback."""
    for args in (("--log-level", "LOUD", "watch"), ("watch", "CA1", "extra")):
        done = _run(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_simulate_reports_an_unreachable_ingest_once_and_never_started() -> None:
    """No ingest listening: no `started` line, one `failed` line naming the URL, exit 1."""
    url = f"ws://127.0.0.1:{free_port()}/twilio"
    done = _run("simulate", "--ingest", url)  # no file: the bundled recording
    assert done.returncode == 1
    assert "started" not in done.stdout
    [line] = done.stdout.strip().splitlines()
    assert "failed: cannot reach ingest at " + url in line
    assert done.stderr == ""


def test_simulate_prints_the_bundled_recording() -> None:
    """`simulate --print-bundled` prints a WAV path that exists (for the README's examples)."""
    done = _run("simulate", "--print-bundled")
    path = Path(done.stdout.strip())
    assert done.returncode == 0 and path.name == "call_dentist.wav" and path.is_file()


def test_demo_ends_when_its_pipe_closes() -> None:
    """`callscribe demo | head -3`: once the reader has gone the demo stops, quietly, at once."""
    proc = subprocess.Popen(
        [CALLSCRIBE, "demo", "--ingest-port", "0", "--gateway-port", "0", "--speed", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    try:
        for _ in range(3):
            assert proc.stdout.readline()
        proc.stdout.close()  # head -3 exits
        proc.wait(timeout=WAIT_S)
        err = proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
