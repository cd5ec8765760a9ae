"""Opening a Deepgram live WebSocket, and which handshake failures are worth retrying.

Deepgram answers a bad key (401), a key without access (403), bad query parameters (400) and
the like with an HTTP status at the handshake; those fail again on retry. 429 (rate limit), 5xx
and network errors may pass on a later try
(https://developers.deepgram.com/docs/recovering-from-connection-errors).
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from shared.errors import AsrError

FINAL_STATUSES = frozenset({400, 401, 402, 403, 404})
"""Handshake statuses that will fail again: never retried."""

MAX_MESSAGE_BYTES = 1 << 20
"""Largest server message accepted; a ``Results`` is a few kB."""


async def open_listen(url: str, *, api_key: str, timeout_s: float) -> ClientConnection:
    """Open the ``/v1/listen`` WebSocket at ``url`` (from
    :func:`~services.transcriber.dgproto.build_url`) with ``Authorization: Token <api_key>``,
    within ``timeout_s`` seconds. No proxy, no compression; closing waits at most 2 s.

    Raises:
        AsrError: ``retryable=False`` for a handshake status in :data:`FINAL_STATUSES`;
            ``retryable=True`` for any other status, a timeout, a network or handshake error.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await connect(
                url,
                additional_headers={"Authorization": f"Token {api_key}"},
                open_timeout=None,
                proxy=None,
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
                close_timeout=2.0,
                user_agent_header="callscribe",
            )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise AsrError(
            f"deepgram handshake HTTP {status}", retryable=status not in FINAL_STATUSES
        ) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise AsrError(
            f"deepgram connect failed: {exc.__class__.__name__}", retryable=True
        ) from None
