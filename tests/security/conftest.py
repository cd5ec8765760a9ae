"""Security test helpers: a gateway with authentication on, an ingest that only Twilio may use.

Each test in this folder is one finding of issue 8, tried as an attacker would, through the
public interfaces (real servers on port 0, the session's redis-server, real WebSockets).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.gateway.auth import mint
from tests.conftest import ROOT
from tests.gateway.conftest import make_settings, running_gateway
from tests.ingest.conftest import ingest_running

SECRET = "test-secret-0123456789abcdef0123456789"
"""The gateway's JWT_SECRET in these tests."""

PUBLIC_URL = "http://ingest.test"
"""Ingest's PUBLIC_URL: signatures are made for it, whatever address the test connects to."""

TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
"""Ingest's TWILIO_AUTH_TOKEN in these tests."""


def token(**claims: Any) -> str:
    """A valid HS256 token for :data:`SECRET` (``mint``'s keywords)."""
    return mint(SECRET, **claims)


def bearer(tok: str) -> dict[str, str]:
    """``Authorization: Bearer`` headers."""
    return {"Authorization": f"Bearer {tok}"}


def expired() -> str:
    """A token that expired a minute ago (past the verifier's leeway)."""
    return mint(SECRET, ttl_s=60, now=time.time() - 120)


@pytest.fixture
def secure_gateway(redis_url: str) -> Callable[..., AbstractAsyncContextManager[int]]:
    """``async with secure_gateway(**settings) as port``: a gateway with JWT authentication."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[int]:
        values = {"gateway_auth": "jwt", "jwt_secret": SECRET, **overrides}
        return running_gateway(make_settings(redis_url, **values))

    return start


@pytest.fixture
def secure_ingest(redis_url: str) -> Callable[..., AbstractAsyncContextManager[int]]:
    """``async with secure_ingest(public_url=…, **settings) as port``: ingest with signatures
    and stream tokens required (``public_url`` must name the port, so tests pass it)."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[int]:
        values = {
            "twilio_insecure": False,
            "twilio_auth_token": TWILIO_TOKEN,
            "public_url": PUBLIC_URL,
            **overrides,
        }
        return ingest_running(redis_url, **values)

    return start


@pytest.fixture
def ingest(redis_url: str) -> Callable[..., AbstractAsyncContextManager[int]]:
    """``async with ingest(**settings) as port``: ingest with ``TWILIO_INSECURE`` (no stream
    tokens), for findings that must hold even then."""
    return lambda **overrides: ingest_running(redis_url, **overrides)


PROCESS_WAIT_S = 30.0
"""Upper bound of a service process's start (imports included) and of its stop, s."""

SERVICE_VARIABLES = (
    "REDIS_URL", "LOG_LEVEL", "GATEWAY_AUTH", "JWT_SECRET", "JWKS_URL", "JWT_AUDIENCE",
    "ALLOWED_ORIGINS", "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "TWILIO_INSECURE",
    "TWILIO_ACCOUNT_SID", "CALLSCRIBE_TOKEN", "ASR_ENGINE", "DEEPGRAM_API_KEY", "DEEPGRAM_URL",
)  # fmt: skip
"""Variables of the caller's environment a service process must not inherit."""


def service_env(**variables: str) -> dict[str, str]:
    """The test's environment without :data:`SERVICE_VARIABLES`, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    return {**env, **variables}


@dataclass
class ServiceProcess:
    """A service started by :func:`service_process`: its ``port`` and every stderr ``lines``
    (logfmt) read so far; all of them once the context has exited."""

    proc: asyncio.subprocess.Process
    port: int = 0
    lines: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        """The ``level=warning`` lines so far."""
        return [line for line in self.lines if "level=warning" in line]

    @property
    def log(self) -> str:
        """Everything it wrote on stderr so far, one string."""
        return "".join(self.lines)


@asynccontextmanager
async def service_process(service: str, env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    """Run ``python -m services.<service> --host 127.0.0.1 --port 0`` (the real entry point, its
    real logging) with exactly ``env``; yield once it logged ``listening``; SIGTERM it on exit
    and wait for it (killed after :data:`PROCESS_WAIT_S`), its whole stderr then in ``lines``.

    Fails when it exits before listening (with its stderr in the message).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{service}", "--host", "127.0.0.1", "--port", "0",
        cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    svc = ServiceProcess(proc)
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert proc.stderr is not None
        while line := (await proc.stderr.readline()).decode(errors="replace"):
            svc.lines.append(line)
            if not listening.done() and "msg=listening" in line:
                port = re.search(r"\bport=(\d+)", line)
                assert port is not None, line
                listening.set_result(int(port.group(1)))
        if not listening.done():
            listening.set_exception(AssertionError(f"{service} exited:\n{svc.log}"))

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(PROCESS_WAIT_S):
            svc.port = await listening
        yield svc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(PROCESS_WAIT_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        async with asyncio.timeout(PROCESS_WAIT_S):
            await reader


@dataclass
class Exited:
    """What :func:`run_to_exit` saw: the exit status and both outputs."""

    returncode: int
    stdout: str
    stderr: str


async def run_to_exit(argv: list[str], env: dict[str, str] | None = None) -> Exited:
    """Run ``argv`` in the project's root to its exit (bounded by :data:`PROCESS_WAIT_S`;
    killed then, and the test fails)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=service_env() if env is None else env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(PROCESS_WAIT_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Exited(proc.returncode, out.decode(), err.decode())
