"""The transcriber's start-up checks: is the configured speech engine usable?

``ASR_ENGINE=deepgram`` (explicitly, or because ``DEEPGRAM_API_KEY`` is set) is checked once at
start by opening one live connection to ``DEEPGRAM_URL`` with the key and closing it at once
(``CloseStream`` before any audio, so nothing is billed):

- no key at all: fatal (:class:`ConfigError`), nothing would ever be transcribed;
- the handshake answers 401 or 403: fatal, the key is refused;
- the URL cannot be reached (DNS, refused, timeout, 5xx): one loud warning naming the URL; the
  worker starts anyway (calls retry per ``MAX_RETRIES``) and :func:`probe_until_ok` probes
  again every :data:`REPROBE_S` until it answers. Meanwhile the worker's health key says
  ``asr_ok: false`` and ``callscribe transcriber --check`` exits 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
from enum import Enum

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

from services.transcriber.dgproto import build_url
from shared.errors import ConfigError
from shared.settings import AsrEngineName, TranscriberSettings
from shared.startup import redact_url

log = logging.getLogger(__name__)

REPROBE_S = 30.0
"""While Deepgram cannot be reached, how often it is probed again, s."""

REFUSED = frozenset({401, 403})


class Probe(Enum):
    """The verdict of one probe."""

    OK = "ok"
    UNREACHABLE = "unreachable"


def check_key(settings: TranscriberSettings) -> None:
    """Refuse ``ASR_ENGINE=deepgram`` without a key.

    Raises:
        ConfigError: the engine is deepgram and ``DEEPGRAM_API_KEY`` is unset or empty.
    """
    key = settings.deepgram_api_key.get_secret_value() if settings.deepgram_api_key else ""
    if settings.asr_engine is AsrEngineName.DEEPGRAM and not key:
        raise ConfigError(
            "ASR_ENGINE=deepgram needs DEEPGRAM_API_KEY (or set ASR_ENGINE=whisper for the "
            "embedded engine)"
        )


async def probe_deepgram(settings: TranscriberSettings) -> Probe:
    """Open and close one Deepgram live connection within ``connect_timeout_s``.

    Returns :attr:`Probe.OK` or :attr:`Probe.UNREACHABLE`.

    Raises:
        ConfigError: the handshake was answered 401 or 403 (the key is refused).
    """
    key = settings.deepgram_api_key.get_secret_value() if settings.deepgram_api_key else ""
    url = build_url(
        settings.deepgram_url,
        channels=2,
        model=settings.deepgram_model,
        language=settings.deepgram_language,
        extra_params=settings.deepgram_params,
    )
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Token {key}"},
                open_timeout=None,
                proxy=None,
                close_timeout=2.0,
                user_agent_header="callscribe",
            )
            try:
                await ws.send(json.dumps({"type": "CloseStream"}))
            finally:
                await ws.close()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in REFUSED:
            raise ConfigError(
                f"Deepgram refused DEEPGRAM_API_KEY (HTTP {status} from "
                f"{redact_url(settings.deepgram_url)}): check the key"
            ) from None
        return _unreachable(settings, f"HTTP {status}")
    except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
        return _unreachable(settings, f"{exc.__class__.__name__}: {exc}")
    return Probe.OK


def _unreachable(settings: TranscriberSettings, why: str) -> Probe:
    log.warning(
        "DEEPGRAM UNREACHABLE: calls will fail until it answers; probing again",
        extra={
            "deepgram_url": redact_url(settings.deepgram_url),
            "error": why[:200],
            "retry_in_s": REPROBE_S,
        },
    )
    return Probe.UNREACHABLE


async def probe_until_ok(
    settings: TranscriberSettings, first: Probe, on_change: dict[str, bool]
) -> None:
    """Probe every :data:`REPROBE_S` while the last verdict is UNREACHABLE; keeps
    ``on_change["asr_ok"]`` up to date (the worker's health key reports it). Returns once
    Deepgram answers. A refused key later is logged as an error (the worker keeps running)."""
    verdict = first
    on_change["asr_ok"] = verdict is Probe.OK
    while verdict is not Probe.OK:
        await asyncio.sleep(REPROBE_S)
        try:
            verdict = await probe_deepgram(settings)
        except ConfigError as exc:
            log.error("deepgram refuses the key", extra={"error": str(exc)})
            verdict = Probe.UNREACHABLE
        on_change["asr_ok"] = verdict is Probe.OK
    log.warning("deepgram reachable", extra={"deepgram_url": redact_url(settings.deepgram_url)})
