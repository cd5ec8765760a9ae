"""Only Twilio starts calls: one-time stream tokens, and one stream per callSid.

The TwiML webhook (``/twiml``, signed by Twilio) issues a random token for the call it is
asked about (:meth:`Admission.issue`) and passes it to the stream as the ``<Parameter>``
:data:`~services.ingest.twilio.STREAM_TOKEN_PARAMETER`; Twilio echoes it in the stream's
``start.customParameters`` (https://www.twilio.com/docs/voice/twiml/stream#custom-parameters).
At ``start`` the read loop awaits :meth:`Admission.admit` once (bounded by
``ADMISSION_TIMEOUT_S``) before it reads any media: the media Twilio sends meanwhile waits in
the socket's buffers and is read, whole and in order, right after. A stream is admitted when:

1. ``start.accountSid`` is ``TWILIO_ACCOUNT_SID`` (when that is set);
2. its token is one issued for this callSid, unused and not expired: ``DEL
   cs:{p}:<sid>:streamtoken:<sha256>`` returns 1, so a token works once (a replayed handshake and
   ``start`` are refused);
3. no stream was admitted for this callSid before and the call has no metadata: ``SET
   cs:{p}:<sid>:admitted 1 NX`` succeeds and ``cs:{p}:<sid>:meta`` does not exist (one MULTI), so a
   second stream can never overwrite a live or ended call's metadata or end it.

Anything else is refused (close 1008 with the verdict as reason), counted and logged, and
nothing of it reaches Redis's call keys or a worker. With ``TWILIO_INSECURE`` (demo, tests)
step 2 is skipped and a Redis that does not answer admits the stream (with a warning);
otherwise it refuses it: a forged call is never let in.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import secrets

import redis.asyncio as aioredis

from shared import keys
from shared.errors import ConfigError
from shared.retry import REDIS_FAILURES
from shared.schema import CallMeta
from shared.settings import IngestSettings

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 128
"""A presented token longer than this is refused without asking Redis."""


class Verdict(enum.Enum):
    """The outcome of :meth:`Admission.admit`; the value is the close reason."""

    ADMITTED = "admitted"
    WRONG_ACCOUNT = "wrong_account"
    BAD_TOKEN = "bad_stream_token"
    CALL_EXISTS = "call_exists"
    UNAVAILABLE = "admission_unavailable"


def token_hash(token: str) -> str:
    """SHA-256 hex of a stream token (what its Redis key holds instead of the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_settings(settings: IngestSettings, *, warn: bool = True) -> None:
    """Refuse to run unprotected by accident; with ``warn``, log a warning when
    ``TWILIO_INSECURE`` is set.

    Raises:
        ConfigError: ``TWILIO_AUTH_TOKEN`` or ``PUBLIC_URL`` is missing and ``TWILIO_INSECURE``
            is not set.
    """
    if settings.twilio_insecure:
        if warn:
            log.warning(
                "TWILIO_INSECURE: unsigned requests and streams without tokens are accepted"
            )
        return
    missing = [
        name
        for name, value in (
            ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
            ("PUBLIC_URL", settings.public_url),
        )
        if not value
    ]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} must be set so that only Twilio can start calls "
            "(or set TWILIO_INSECURE=1 for local tests only)"
        )


class Admission:
    """Issues stream tokens and admits streams (see the module docstring).

    ``refused`` counts refusals by verdict since start.
    """

    def __init__(self, redis: aioredis.Redis, settings: IngestSettings) -> None:
        self._redis = redis
        self._require_token = not settings.twilio_insecure
        self._account = settings.twilio_account_sid
        self._token_ttl_s = settings.stream_token_ttl_s
        self._timeout_s = settings.admission_timeout_s
        self._claim_ttl_s = settings.retention_s
        self.refused: dict[Verdict, int] = {v: 0 for v in Verdict if v is not Verdict.ADMITTED}

    async def issue(self, call_sid: str) -> str:
        """A new one-time token for ``call_sid``, stored for ``STREAM_TOKEN_TTL_S``.

        Raises:
            RedisError, OSError, TimeoutError: Redis did not store it in time.
        """
        token = secrets.token_urlsafe(24)
        async with asyncio.timeout(self._timeout_s):
            await self._redis.set(
                keys.stream_token(call_sid, token_hash(token)), "1", ex=self._token_ttl_s
            )
        return token

    async def admit(self, meta: CallMeta, token: str) -> Verdict:
        """Decide whether the stream that sent this ``start`` may become a call."""
        sid = meta.call_sid
        if self._account and meta.account_sid != self._account:
            return self._refuse(Verdict.WRONG_ACCOUNT, sid)
        if self._require_token and (not token or len(token) > MAX_TOKEN_CHARS):
            return self._refuse(Verdict.BAD_TOKEN, sid)
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._require_token:
                    used = await self._redis.delete(keys.stream_token(sid, token_hash(token)))
                    if used != 1:
                        return self._refuse(Verdict.BAD_TOKEN, sid)
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(keys.admitted(sid), "1", nx=True, ex=self._claim_ttl_s)
                    pipe.exists(keys.meta(sid))
                    claimed, exists = await pipe.execute()
        except REDIS_FAILURES as exc:
            if not self._require_token:
                log.warning(
                    "admission: redis unavailable, admitting (TWILIO_INSECURE)",
                    extra={"call_sid": sid, "error": exc.__class__.__name__},
                )
                return Verdict.ADMITTED
            return self._refuse(Verdict.UNAVAILABLE, sid)
        if not claimed or exists:
            return self._refuse(Verdict.CALL_EXISTS, sid)
        return Verdict.ADMITTED

    def _refuse(self, verdict: Verdict, call_sid: str) -> Verdict:
        self.refused[verdict] += 1
        log.warning("stream refused", extra={"call_sid": call_sid, "reason": verdict.value})
        return verdict
