"""Starting a service: one clear line for every misconfiguration, one warning for a dead Redis.

What a person starting a service sees (issue 11, item 5):

- a bad setting (``GATEWAY_PORT=abc``, ``ASR_ENGINE=bogus``): ``callscribe gateway: PORT='abc': Input
  should be a valid integer…`` and exit status 2, never pydantic's traceback
  (:func:`load_settings`, :func:`describe_validation`);
- a port already taken: ``callscribe gateway: cannot listen on 0.0.0.0:8080: address already in
  use`` and exit status 1 (:func:`run_service`);
- Redis unreachable at start: one warning naming the URL with its password masked, repeated at
  most every :data:`REDIS_REMIND_S` while it lasts, and one line when it answers
  (:func:`watch_redis`); the service keeps retrying meanwhile (its loops' own warnings are rate
  limited by :mod:`shared.retry`);
- ``--check``: :func:`http_check` asks a service's own ``/healthz``, which is 503 while Redis
  does not answer.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from shared.aio import cancel_and_wait
from shared.errors import ConfigError
from shared.logs import setup_logging
from shared.redisconn import connect, is_memory
from shared.retry import REDIS_FAILURES
from shared.service import run_until_signal
from shared.settings import CommonSettings
from shared.settings_doc import deprecated_names

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)

REDIS_REMIND_S = 60.0
"""While Redis stays unreachable after start, the warning is repeated this often, s."""

REDIS_PROBE_S = 2.0
"""How often the start-up probe pings an unreachable Redis, s (each ping bounded by as much)."""

_SECRET_HINTS = ("key", "token", "secret", "password")
EXIT_CONFIG = 2
EXIT_FAILED = 1


def describe_validation(exc: ValidationError) -> str:
    """One line naming each bad environment variable, its value (unless secret) and the problem.

    ``port: Input should be a valid integer [type=int_parsing, input_value='abc']`` becomes
    ``GATEWAY_PORT='abc': Input should be a valid integer, unable to parse string as an integer``.
    """
    parts = []
    for err in exc.errors():
        if err["type"] == "default_factory_not_called":
            continue  # a consequence of another field's error, which is reported
        name = ".".join(str(p) for p in err["loc"]).upper()
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        secret = any(h in name.lower() for h in _SECRET_HINTS)
        if name and isinstance(value, str | int | float) and not secret:
            parts.append(f"{name}={value!r}: {msg}")
        elif name:
            parts.append(f"{name}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


def load_settings(cls: type[S]) -> S:
    """``cls()`` read from the environment.

    Raises:
        ConfigError: a variable has a value the model refuses (the message names it).
    """
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc)) from None


def warn_deprecated_names(cls: type[CommonSettings]) -> None:
    """One warning per deprecated variable name set in the environment (``PORT`` where
    ``INGEST_PORT`` is meant: :func:`shared.settings_doc.deprecated_names`); call it once
    logging is set up."""
    for old, new in deprecated_names(cls):
        log.warning("deprecated setting name", extra={"variable": old, "use": new})


def redact_url(url: str) -> str:
    """``redis://user:secret@h:6379/0`` → ``redis://user:***@h:6379/0``: never print a password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0] if ":" in user else ""
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


async def _ping(redis: Any, timeout_s: float) -> str | None:
    """One PING within ``timeout_s`` (s): None when answered, else the reason (the error's class
    and message, at most 200 characters)."""
    try:
        async with asyncio.timeout(timeout_s):
            await redis.ping()
        return None
    except REDIS_FAILURES as exc:  # TimeoutError is an OSError
        return f"{exc.__class__.__name__}: {exc}"[:200]


async def redis_unreachable(url: str, timeout_s: float = REDIS_PROBE_S) -> str | None:
    """Ping ``url`` once: None when it answers within ``timeout_s`` (s), else the reason (the
    error's class and message, at most 200 characters). ``memory://`` is in-process: None.
    Never raises but CancelledError."""
    if is_memory(url):
        return None
    redis = connect(url, socket_timeout_s=timeout_s)
    try:
        return await _ping(redis, timeout_s)
    finally:
        await redis.aclose()


async def watch_redis(url: str, *, service: str, remind_s: float = REDIS_REMIND_S) -> bool:
    """Ping ``url`` every :data:`REDIS_PROBE_S` until it answers; warn once (then every
    ``remind_s``, s) while it does not.

    Returns True at once when Redis answers the first ping (nothing is logged), True after a
    ``redis reachable`` line (at warning level, beside the warnings it ends) once it answers later; never raises but CancelledError. ``memory://`` is
    in-process: True at once.
    """
    if is_memory(url):
        return True
    redis = connect(url, socket_timeout_s=REDIS_PROBE_S)
    loop = asyncio.get_running_loop()
    warned_at: float | None = None
    try:
        while (reason := await _ping(redis, REDIS_PROBE_S)) is not None:
            now = loop.time()
            if warned_at is None or now - warned_at >= remind_s:
                log.warning(
                    "REDIS UNREACHABLE: nothing can be served until it answers; retrying",
                    extra={"service": service, "redis_url": redact_url(url), "error": reason},
                )
                warned_at = now
            await asyncio.sleep(REDIS_PROBE_S)
        if warned_at is not None:
            log.warning(
                "redis reachable", extra={"service": service, "redis_url": redact_url(url)}
            )
        return True
    finally:
        await redis.aclose()


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def bind_error_line(exc: OSError, host: str, port: int) -> str:
    """``cannot listen on 0.0.0.0:8080: address already in use`` for a bind failure."""
    reason = {
        errno.EADDRINUSE: "address already in use (another process listens there; set PORT or --port)",
        errno.EACCES: "permission denied (ports below 1024 need privileges)",
        errno.EADDRNOTAVAIL: "no such address on this host (set HOST or --host)",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return f"cannot listen on {host}:{port}: {reason}"


def run_service(
    service: str,
    redis_url: str,
    main: Callable[[asyncio.Event], Awaitable[None]],
    *,
    listen: tuple[str, int] | None = None,
) -> int:
    """Run a service's ``main(stop)`` until SIGTERM/SIGINT, with :func:`watch_redis` beside it.

    Returns the exit status: 0 after a clean stop, 2 for a :class:`ConfigError` and 1 when the
    address ``listen`` (host, port) cannot be bound, each after one line on stderr
    (``callscribe <service>: …``) instead of a traceback.
    """

    async def with_probe(stop: asyncio.Event) -> None:
        probe = asyncio.create_task(watch_redis(redis_url, service=service), name="redis-probe")
        try:
            await main(stop)
        finally:
            await cancel_and_wait(probe)

    try:
        return run_until_signal(with_probe)
    except Exception as exc:  # ConfigError or OSError, maybe inside an ExceptionGroup
        leaf = _leaf(exc)
        if isinstance(leaf, ConfigError):
            print(f"callscribe {service}: {leaf}", file=sys.stderr)
            return EXIT_CONFIG
        if isinstance(leaf, OSError) and listen is not None:
            print(f"callscribe {service}: {bind_error_line(leaf, *listen)}", file=sys.stderr)
            return EXIT_FAILED
        raise


async def http_check(host: str, port: int, timeout_s: float = 5.0) -> tuple[bool, str]:
    """GET ``http://host:port/healthz`` (``0.0.0.0``/``::`` → loopback): ``(ok, one-line reason)``.

    ``ok`` is True only for a 200 answer within ``timeout_s``.
    """
    import aiohttp

    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in target:
        target = f"[{target}]"
    url = f"http://{target}:{port}/healthz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url) as resp,
        ):
            body = await resp.text()
            return resp.status == 200, f"{url}: HTTP {resp.status} {body[:200]}"
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return False, f"{url}: {exc.__class__.__name__}: {exc}"


H = TypeVar("H", bound=CommonSettings)


def http_service_main(
    service: str,
    settings_cls: type[H],
    description: str,
    argv: list[str] | None,
    *,
    refuse: Callable[[H], object],
    run: Callable[[H, asyncio.Event], Awaitable[None]],
) -> int:
    """The ``main`` of an HTTP service (ingest, gateway): ``--host``/``--port`` over the
    settings' defaults, ``--check``, then run until SIGTERM/SIGINT.

    ``refuse(settings)`` raises :class:`ConfigError` for settings the service must not start
    with (no key, no signature checks); what it returns is ignored, so a class whose constructor
    checks them will do. Returns the exit status: 2 for a bad setting or a
    refusal, 1 for a failed ``--check`` or a port that cannot be bound, each with one line on
    stderr (``callscribe <service>: …``); 0 after a clean stop.
    """
    try:
        settings = load_settings(settings_cls)
    except ConfigError as exc:
        print(f"callscribe {service}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = getattr(settings, "host"), getattr(settings, "port")  # noqa: B009
    parser = argparse.ArgumentParser(prog=f"callscribe {service}", description=description)
    parser.add_argument("--host", default=host, help=f"listen address ({host})")
    parser.add_argument("--port", type=int, default=port, help=f"port ({port})")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 0 if the {service} on --host/--port is healthy"
    )
    args = parser.parse_args(argv)
    settings = settings.model_copy(update={"host": args.host, "port": args.port})
    setup_logging(getattr(settings, "log_level"))  # noqa: B009
    warn_deprecated_names(settings_cls)
    if args.check:
        ok, why = asyncio.run(http_check(args.host, args.port))
        if not ok:
            print(f"callscribe {service}: unhealthy: {why}", file=sys.stderr)
        return 0 if ok else EXIT_FAILED
    try:
        refuse(settings)
    except ConfigError as exc:
        print(f"callscribe {service}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run_service(
        service,
        getattr(settings, "redis_url"),  # noqa: B009
        lambda stop: run(settings, stop),
        listen=(args.host, args.port),
    )
