"""What ``callscribe watch`` is asked to do: :class:`WatchOptions`, and the gateway URL (:func:`v1_url`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WatchOptions:
    """How to watch.

    ``url``: the gateway's ``/v1/ws`` URL (``ws://host:8080/v1/ws``; a bare ``ws://host:8080``
    gets ``/v1/ws`` appended). ``since``: a history ID to replay from; None = the whole call
    (``"0"``), whether it was given by SID or followed from its start.
    ``open_timeout_s``: WebSocket handshake and first answer. ``end_grace_s``: after
    ``call_ended`` without ``end``, how long to wait for it before exiting anyway.
    ``wait_for_start``: with ``call_sid``, subscribe only once that call is live (listed or
    ``call_started``), from its start (the demo, which starts its watcher before its call).
    ``reconnect_for_s``: after a lost connection (a gateway restarting, a rolling restart of
    several), how long to keep trying, with backoff from ``reconnect_delay_s`` up to
    ``reconnect_max_s`` and jitter, before giving up; ``reconnects``: at most this many tries
    in a row (None = as many as fit in ``reconnect_for_s``).
    ``tick_s``: progress refresh period on a TTY. ``token``: the bearer token sent as
    ``Authorization: Bearer`` (``callscribe token`` mints one); None when the gateway runs
    with ``GATEWAY_AUTH=none``.

    Exit status of a watch: 0 once the call ended with its transcript complete; 1 when the
    gateway could not be reached for ``reconnect_for_s``, the call is unknown (not live, not in
    the gateway's history; unless ``wait_for_start``), recognition failed (``asr_failed``:
    the transcript is incomplete), or the gateway refused the token (1008).
    """

    url: str
    call_sid: str | None = None
    since: str | None = None
    open_timeout_s: float = 10.0
    end_grace_s: float = 3.0
    wait_for_start: bool = False
    reconnects: int | None = None
    reconnect_for_s: float = 120.0
    reconnect_delay_s: float = 0.5
    reconnect_max_s: float = 5.0
    tick_s: float = 1.0
    token: str | None = None


def v1_url(url: str) -> str:
    """``ws://h:8080`` or ``ws://h:8080/`` → ``ws://h:8080/v1/ws``; a URL with a path is kept.

    ``http://``/``https://`` (the address of the web page) become ``ws://``/``wss://``.

    Raises:
        ValueError: not a ws, wss, http or https URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    if not sep or scheme not in ("ws", "wss") or not rest:
        raise ValueError(f"not a ws:// URL: {url!r}")
    host, _, path = rest.partition("/")
    if not path:
        return f"{scheme}://{host}/v1/ws"
    return f"{scheme}://{rest}"
