"""One rooted error hierarchy for callscribe.

::

    CallscribeError
    ├── ConfigError              a setting or argument that cannot work (one line for the user)
    ├── BadInput                 something a peer sent that we refuse (never a crash)
    │   ├── TwilioMessageError   a malformed or out-of-order Twilio Media Streams message
    │   ├── ClientMessageError   a gateway client speaking nonsense
    │   └── Unauthorized         no valid bearer token (HTTP 401, WebSocket close 1008)
    └── TransportError           a network peer failed; ``retryable`` says whether to try again
        ├── RedisUnavailable
        └── AsrError             the speech engine (Deepgram socket, embedded model) failed

Each :class:`BadInput` carries a short machine ``code`` (``bad_json``, ``unknown_event``…) that
goes into logs and into the ``error`` event a client receives.
"""

from __future__ import annotations


class CallscribeError(Exception):
    """Root of every error callscribe raises on purpose."""


class ConfigError(CallscribeError):
    """A setting, argument or credential that cannot work; the message names it, in one line.

    A service's entry point prints it as ``callscribe <service>: <message>`` and exits 2.
    """


class BadInput(CallscribeError):
    """A peer sent something we refuse; ``code`` names the kind, the message says it in words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TwilioMessageError(BadInput):
    """A Twilio Media Streams message we cannot use (bad JSON, unknown event, bad payload…)."""


class ClientMessageError(BadInput):
    """A gateway client sent a message outside the protocol."""


class Unauthorized(BadInput):
    """A client presented no token, or one that is expired, badly signed or for another
    audience; ``code`` is ``unauthorized``. The message says why without echoing the token."""

    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message)


class TransportError(CallscribeError):
    """A network peer failed; ``retryable`` is False for failures that repeat (401, 403, 400)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class RedisUnavailable(TransportError):
    """Redis did not answer in time or refused the connection (always retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class AsrError(TransportError):
    """The speech engine failed: a Deepgram handshake or socket error, or the embedded model."""
