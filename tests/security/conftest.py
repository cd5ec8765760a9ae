"""Security test helpers: a gateway with authentication on, an ingest that only Twilio may use.

Each test in this folder is one finding of issue 8, tried as an attacker would, through the
public interfaces (real servers on port 0, the session's redis-server, real WebSockets).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from services.gateway.auth import mint
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
