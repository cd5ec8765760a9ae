"""The voice webhook (TwiML that starts the stream) and Twilio request signatures.

* TwiML: ``<Start><Stream url="wss://HOST/twilio" track="both_tracks">`` with ``<Parameter>``
  From, To, Direction (a ``<Stream url>`` cannot carry a query string, so per-call data travels
  in parameters: https://www.twilio.com/docs/voice/twiml/stream#custom-parameters), then
  ``<Dial>FORWARD_TO</Dial>`` when set; otherwise ``<Pause length="HOLD_S">`` keeps the call
  (and its transcript) open for the caller to speak, where an empty rest of the document would
  make Twilio hang up at once. Built with ``twilio.twiml.voice_response``.
* Signatures (https://www.twilio.com/docs/usage/webhooks/webhooks-security): when
  ``TWILIO_AUTH_TOKEN`` is set, ``X-Twilio-Signature`` is checked with
  ``twilio.request_validator.RequestValidator`` against the URL Twilio requested: ``PUBLIC_URL``
  + path (+ query) when set, else the request's own ``Host``, never what an
  ``X-Forwarded-*`` header claims. A webhook POST signs its form parameters, a GET none. The
  Media Streams WebSocket handshake signs ``wss://HOST/twilio`` with no parameters
  (docs/protocol.md, "WebSocket /twilio"): that signature never changes, so it only proves the
  peer once saw one; what admits a stream is the one-time token below.
* Stream tokens: the webhook asks :class:`~services.ingest.admission.Admission` for a token
  bound to the request's ``CallSid`` and adds it as the ``<Parameter>``
  :data:`~services.ingest.twilio.STREAM_TOKEN_PARAMETER` (503 when Redis cannot store it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Start, Stream, VoiceResponse

from shared.retry import REDIS_FAILURES
from shared.schema import CALL_SID_RE
from shared.settings import IngestSettings

from .admission import Admission
from .twilio import STREAM_TOKEN_PARAMETER

log = logging.getLogger(__name__)

STREAM_PATH = "/twilio"
"""Where Twilio opens the Media Streams WebSocket."""

STREAM_PARAMETERS = ("From", "To", "Direction")
"""Webhook parameters forwarded to the stream as ``<Parameter>``s (``customParameters``)."""

SIGNATURE_HEADER = "x-twilio-signature"

"""What a ``CallSid`` may look like before it names a Redis key (Twilio's: ``CA`` + 32 hex)."""

MAX_WEBHOOK_BODY_BYTES = 64 * 1024
"""A webhook body larger than this is refused (413); Twilio's are a few hundred bytes."""


def _first(value: str | None) -> str | None:
    """First element of a comma-separated forwarded header (proxies append)."""
    if not value:
        return None
    return value.split(",")[0].strip() or None


def _ws_scheme(http_scheme: str) -> str:
    return "wss" if http_scheme in ("https", "wss") else "ws"


def _http_scheme(scheme: str) -> str:
    return "https" if scheme in ("https", "wss") else "http"


def base_url(conn: web.BaseRequest, settings: IngestSettings, *, forwarded: bool = True) -> str:
    """The public ``http(s)://host[/prefix]`` of ingest, without a trailing slash.

    ``PUBLIC_URL`` when set; else from the request: ``X-Forwarded-Proto``/``X-Forwarded-Host``
    when a proxy set them (and ``forwarded``), then the ``Host`` header and the connection's
    own scheme. Signature checks pass ``forwarded=False``: a client must not choose the URL
    its signature is checked against.
    """
    if settings.public_url:
        return settings.public_url.rstrip("/")
    headers = conn.headers
    scheme = (forwarded and _first(headers.get("x-forwarded-proto"))) or _http_scheme(conn.scheme)
    host = (forwarded and _first(headers.get("x-forwarded-host"))) or conn.host
    return f"{_http_scheme(scheme)}://{host}"


def stream_url(conn: web.BaseRequest, settings: IngestSettings, *, forwarded: bool = True) -> str:
    """``wss://host[/prefix]/twilio`` (``ws://`` when the public URL is plain http)."""
    parts = urlsplit(base_url(conn, settings, forwarded=forwarded))
    return f"{_ws_scheme(parts.scheme)}://{parts.netloc}{parts.path}{STREAM_PATH}"


HOLD_S = 3600
"""Without FORWARD_TO, how long the webhook's TwiML keeps the caller on the line, s."""


def voice_response(
    url: str, params: Mapping[str, str], forward_to: str | None, stream_token: str | None = None
) -> str:
    """The TwiML document: start streaming both tracks to ``url``, then dial ``forward_to``
    (without one: pause :data:`HOLD_S` seconds, so the caller can talk to the transcript).

    ``params`` are the webhook's parameters; those in :data:`STREAM_PARAMETERS` that are
    present become ``<Parameter>``s of the stream, and so does ``stream_token`` when given.
    """
    response = VoiceResponse()
    start = Start()
    stream = Stream(url=url, track="both_tracks")
    for name in STREAM_PARAMETERS:
        if params.get(name):
            stream.parameter(name=name, value=params[name])
    if stream_token:
        stream.parameter(name=STREAM_TOKEN_PARAMETER, value=stream_token)
    start.append(stream)
    response.append(start)
    if forward_to:
        response.dial(forward_to)
    else:
        response.pause(length=HOLD_S)
    return str(response)


class TwilioAuth:
    """Checks ``X-Twilio-Signature`` when an auth token is configured.

    Without ``settings.twilio_auth_token`` every request is accepted and one warning is logged
    (per instance: one ingest app, one warning).
    """

    def __init__(self, settings: IngestSettings) -> None:
        self._settings = settings
        token = settings.twilio_auth_token
        self._validator = RequestValidator(token.get_secret_value()) if token else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when requests must be signed."""
        return self._validator is not None

    def _verify(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        if self._validator is None:
            if not self._warned:
                self._warned = True
                log.warning("TWILIO_AUTH_TOKEN is not set: Twilio signatures are not checked")
            return True
        if not signature:
            return False
        return bool(self._validator.validate(url, dict(params), signature))

    def check_http(self, request: web.BaseRequest, form: Mapping[str, str]) -> bool:
        """Is the webhook request signed? POST signs ``form``; GET signs no parameters."""
        url = base_url(request, self._settings, forwarded=False) + request.path
        if request.query_string:
            url += "?" + request.query_string
        params = form if request.method == "POST" else {}
        return self._verify(url, params, request.headers.get(SIGNATURE_HEADER))

    def check_ws(self, conn: web.BaseRequest) -> bool:
        """Is the WebSocket handshake signed for ``wss://HOST/twilio`` with no parameters?"""
        return self._verify(
            stream_url(conn, self._settings, forwarded=False),
            {},
            conn.headers.get(SIGNATURE_HEADER),
        )


async def voice_webhook(
    request: web.BaseRequest, settings: IngestSettings, auth: TwilioAuth, admission: Admission
) -> web.Response:
    """``GET``/``POST /twiml``: the TwiML that streams the call to us, with a stream token for
    its ``CallSid`` (403 if badly signed, 503 if Redis cannot store the token)."""
    form: dict[str, str] = {}
    if request.method == "POST":
        body = bytearray()
        async for chunk in request.content.iter_any():  # at most the limit, never the whole body
            body += chunk
            if len(body) > MAX_WEBHOOK_BODY_BYTES:
                return web.Response(text="request body too large\n", status=413)
        # Twilio posts application/x-www-form-urlencoded; last value wins for repeated names
        form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    if not auth.check_http(request, form):
        log.warning("webhook signature refused", extra={"method": request.method})
        return web.Response(text="invalid Twilio signature\n", status=403)
    params = form if request.method == "POST" else dict(request.query)
    call_sid = params.get("CallSid", "")
    token = None
    if CALL_SID_RE.match(call_sid):
        try:
            token = await admission.issue(call_sid)
        except REDIS_FAILURES as exc:
            log.warning(
                "stream token not stored", extra={"call_sid": call_sid, "error": type(exc).__name__}
            )
            return web.Response(text="temporarily unavailable\n", status=503)
    else:
        log.warning("webhook without a CallSid: no stream token", extra={"length": len(call_sid)})
    xml = voice_response(stream_url(request, settings), params, settings.forward_to, token)
    return web.Response(text=xml, content_type="application/xml")
