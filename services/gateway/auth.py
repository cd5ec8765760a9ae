"""Who may watch what: bearer JWTs (RFC 7519) and the scope their claims grant.

Every gateway endpoint but ``/``, ``/healthz`` and ``/metrics`` needs a token
(docs/security.md, "Watchers"): ``Authorization: Bearer <jwt>`` on HTTP; on the WebSockets the
same header or ``?token=<jwt>`` (browsers and the tutorial's clients cannot set headers there).
A token is verified with PyJWT (https://pyjwt.readthedocs.io/en/stable/usage.html): HS256
against ``JWT_SECRET``, or RS256/ES256 against the keys of ``JWKS_URL`` (``PyJWKClient``, keys
cached for :data:`JWKS_CACHE_S`); ``exp`` and ``aud`` (``JWT_AUDIENCE``) are required. Claims:

* ``scope``: ``"all"`` (every call), ``"numbers"`` (calls whose ``from`` or ``to`` is one of
  ``numbers``) or ``"call"`` (the one call ``call_sid``);
* ``history``: true lets the holder read what was said before it subscribed (replay with
  ``since``, ``/client``'s replay, ``GET …/transcript``) and see ended calls; false (the
  default) gives live events only.

A call outside the scope is answered exactly as a call that does not exist (404
``unknown_call``), so a token never tells whether other calls exist. ``GATEWAY_AUTH=none``
grants :data:`OPEN_GRANT` to everyone (the demo), with a warning at start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError, Unauthorized
from shared.schema import CallMeta, CallStatus, ErrorEvent
from shared.settings import GatewaySettings

log = logging.getLogger(__name__)

JWKS_CACHE_S = 300
"""How long keys fetched from ``JWKS_URL`` are reused before being fetched again, s."""

JWKS_TIMEOUT_S = 5.0
"""Longest wait for the JWKS endpoint, s."""

LEEWAY_S = 5.0
"""Clock skew tolerated on ``exp``/``nbf``/``iat``, s."""

PUBLIC_PATHS = frozenset({"/", "/healthz", "/metrics"})
"""Paths served without a token: the page (its data comes through ``/v1/ws``) and probes."""

WS_PATHS = frozenset({"/client", "/v1/ws"})
"""WebSocket paths: their handler refuses a bad token with close 1008, not HTTP 401."""


class Scope(StrEnum):
    """Which calls a token shows: every call, calls from or to its ``numbers``, or one call."""

    ALL = "all"
    NUMBERS = "numbers"
    CALL = "call"


class TokenClaims(BaseModel):
    """The claims callscribe reads from a verified token (others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str = Field(default="", max_length=200)
    exp: float
    scope: Scope
    numbers: list[str] = Field(default_factory=list, max_length=1000)
    call_sid: str | None = Field(default=None, max_length=64)
    history: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token lets its holder see.

    ``numbers`` is used when ``scope`` is ``numbers``, ``call_sid`` when it is ``call``.
    ``expires_at`` is Unix seconds, None for :data:`OPEN_GRANT`.
    """

    subject: str
    scope: Scope
    numbers: frozenset[str] = frozenset()
    call_sid: str | None = None
    history: bool = False
    expires_at: float | None = None

    @property
    def all_calls(self) -> bool:
        """True when every call is visible (no metadata needed to decide)."""
        return self.scope is Scope.ALL

    def sees_sid(self, call_sid: str) -> bool | None:
        """Whether the call is visible from its SID alone; None when its metadata decides."""
        if self.scope is Scope.ALL:
            return True
        if self.scope is Scope.CALL:
            return call_sid == self.call_sid
        return None

    def sees(self, meta: CallMeta | None) -> bool:
        """Whether a call with this metadata is visible (None = unknown: not visible unless all)."""
        if meta is None:
            return self.scope is Scope.ALL
        if not self.history and meta.status is CallStatus.ENDED:
            return False
        by_sid = self.sees_sid(meta.call_sid)
        if by_sid is not None:
            return by_sid
        return bool(meta.from_ and meta.from_ in self.numbers) or bool(
            meta.to and meta.to in self.numbers
        )

    def filter(self, calls: Iterable[CallMeta]) -> list[CallMeta]:
        """The visible ones of ``calls``, in order."""
        return [c for c in calls if self.sees(c)]


OPEN_GRANT = Grant(subject="anonymous", scope=Scope.ALL, history=True)
"""Everyone's grant when ``GATEWAY_AUTH=none``."""


def mint(
    secret: str,
    *,
    scope: Scope = Scope.ALL,
    numbers: Iterable[str] = (),
    call_sid: str | None = None,
    history: bool = False,
    ttl_s: float = 3600.0,
    subject: str = "operator",
    audience: str = "callscribe",
    now: float | None = None,
) -> str:
    """An HS256 token for ``secret`` valid for at least ``ttl_s`` seconds (``callscribe token``).

    ``exp`` is whole seconds, rounded up, so a short token never lives less than asked.

    Raises:
        ValueError: ``scope`` ``numbers`` without numbers, or ``call`` without ``call_sid``, or
            a ``scope`` that is none of :class:`Scope`'s values.
    """
    scope = Scope(scope)
    if scope is Scope.NUMBERS and not list(numbers):
        raise ValueError("scope numbers needs at least one number")
    if scope is Scope.CALL and not call_sid:
        raise ValueError("scope call needs a call_sid")
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": subject,
        "aud": audience,
        "iat": int(issued),
        "exp": math.ceil(issued + ttl_s),
        "scope": scope.value,
        "history": history,
    }
    if scope is Scope.NUMBERS:
        claims["numbers"] = list(numbers)
    if scope is Scope.CALL:
        claims["call_sid"] = call_sid
    return jwt.encode(claims, secret, algorithm="HS256")


Verifier = Callable[[str], Awaitable[Grant]]


class Authenticator:
    """Turns a presented token into a :class:`Grant`; built once per gateway.

    With ``warn`` (the default) the constructor logs one warning when ``GATEWAY_AUTH=none``;
    a caller that only checks the settings before the gateway builds its own (the start-up
    refusal in ``services.gateway.__main__``) passes ``warn=False``, so a start logs it once.

    Raises (from the constructor):
        ConfigError: ``GATEWAY_AUTH=jwt`` (the default) without ``JWT_SECRET`` or ``JWKS_URL``.
    """

    def __init__(self, settings: GatewaySettings, *, warn: bool = True) -> None:
        self.enabled = settings.gateway_auth == "jwt"
        self._audience = settings.jwt_audience
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._jwks: jwt.PyJWKClient | None = None
        if settings.jwks_url:
            self._jwks = jwt.PyJWKClient(
                settings.jwks_url, cache_keys=True, lifespan=JWKS_CACHE_S, timeout=JWKS_TIMEOUT_S
            )
        if self.enabled and not (self._secret or self._jwks):
            raise ConfigError(
                "GATEWAY_AUTH=jwt needs JWT_SECRET or JWKS_URL "
                "(or set GATEWAY_AUTH=none to run without authentication, for a demo only)"
            )
        if self.enabled and self._secret is not None and len(self._secret.encode()) < 32:
            raise ConfigError(
                "JWT_SECRET must be at least 32 bytes (RFC 7518 §3.2), e.g. openssl rand -hex 32"
            )
        if not self.enabled and warn:
            log.warning("GATEWAY_AUTH=none: every client sees every call, unauthenticated")

    async def grant(self, token: str | None) -> Grant:
        """The grant of ``token`` (:data:`OPEN_GRANT` when authentication is off).

        Raises:
            Unauthorized: no token, a malformed, expired or badly signed one, another
                audience, or claims that grant nothing.
        """
        if not self.enabled:
            return OPEN_GRANT
        if not token:
            raise Unauthorized("a bearer token is required")
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == "HS256" and self._secret:
                key: Any = self._secret
            elif alg in ("RS256", "ES256") and self._jwks is not None:
                jwks = self._jwks
                key = (await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)).key
            else:
                raise Unauthorized(f"tokens signed with {str(alg)[:10]} are not accepted")
            raw = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "aud"]},
            )
            claims = TokenClaims.model_validate(raw)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.PyJWKClientError:
            raise Unauthorized("the token's signing key cannot be found") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token ({exc.__class__.__name__})") from None
        except ValidationError:
            raise Unauthorized("the token's claims grant nothing (scope)") from None
        if claims.scope is Scope.NUMBERS and not claims.numbers:
            raise Unauthorized("scope numbers without numbers")
        if claims.scope is Scope.CALL and not claims.call_sid:
            raise Unauthorized("scope call without call_sid")
        return Grant(
            subject=claims.sub,
            scope=claims.scope,
            numbers=frozenset(claims.numbers),
            call_sid=claims.call_sid,
            history=claims.history,
            expires_at=claims.exp,
        )


def presented_token(request: web.BaseRequest, *, query: bool) -> str | None:
    """The bearer token of ``request``: the ``Authorization`` header, else (``query``) the
    ``token`` query parameter."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if query:
        return request.query.get("token") or None
    return None


GRANT: web.RequestKey[Grant] = web.RequestKey("grant", Grant)
"""Where the middleware leaves a request's :class:`Grant` (``request[GRANT]``)."""


def unauthorized(message: str) -> web.Response:
    """HTTP 401 with an ``error`` body (docs/protocol.md, "error") and ``WWW-Authenticate``."""
    body = ErrorEvent(code="unauthorized", message=message).model_dump()
    return web.json_response(
        body, status=401, headers={"WWW-Authenticate": 'Bearer realm="callscribe"'}
    )


def auth_middleware(auth: Authenticator) -> Any:
    """aiohttp middleware: every path but :data:`PUBLIC_PATHS` and :data:`WS_PATHS` needs a
    valid ``Authorization: Bearer`` token (401 otherwise) and gets ``request[GRANT]``; paths
    added later are covered too."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC_PATHS or path in WS_PATHS:
            return await handler(request)
        try:
            request[GRANT] = await auth.grant(presented_token(request, query=False))
        except Unauthorized as exc:
            log.info("http request refused", extra={"path": path[:100], "reason": exc.message})
            return unauthorized(exc.message)
        return await handler(request)

    return middleware
