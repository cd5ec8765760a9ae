"""The interface every ASR engine implements, so the worker does not care which one runs.

A worker opens one :class:`AsrSession` per call with :meth:`AsrEngine.open`, feeds it the call's
mixed frames in order with :meth:`AsrSession.send`, and at ``eof`` calls
:meth:`AsrSession.finish`, which returns once every final result has been delivered (or the
timeout passed). Results are delivered by awaiting the ``on_result`` callback given at open,
one at a time, in order; the worker fills in ``id`` for finals and publishes.

Times: everything is in call time. ``AudioFrame.t_ms`` is ms from the stream start, and the
engine's :class:`~shared.schema.TranscriptEvent` ``start``/``end`` are seconds from the start of
the call, whatever the engine's own clock says (Deepgram's restarts at 0 on each connection).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from shared.schema import TranscriptEvent

OnResult = Callable[[TranscriptEvent], Awaitable[None]]
"""Called with every interim and final result, in order; ``id`` is None (the worker sets it)."""


@dataclass(frozen=True)
class CallAudio:
    """What an engine needs to know of a call before its first frame.

    ``channels``: 1 (mono, caller only) or 2 (interleaved: 0 = caller, 1 = callee).
    ``start_ms``: the call time of the first frame the session will get (non-zero when a worker
    resumes a call another worker started). ``first_segment``: the first free segment number.
    """

    call_sid: str
    channels: int
    start_ms: int = 0
    first_segment: int = 0


class AsrSession(Protocol):
    """One call's live recognition session."""

    async def send(self, t_ms: int, pcmu: bytes) -> None:
        """Feed one mixed frame (``t_ms`` = its start in call time; bytes as in AudioFrame).

        Raises:
            AsrError: the engine failed for good (retries exhausted, or a final error like 401).
        """
        ...

    async def finish(self, timeout_s: float) -> None:
        """No more audio: flush, deliver every remaining final, then close. Bounded by ``timeout_s``."""
        ...

    async def aclose(self) -> None:
        """Abandon the session at once (worker shutdown or call handed over); idempotent."""
        ...


class AsrEngine(Protocol):
    """A factory of sessions; one per worker process, shared by all its calls."""

    name: str

    async def open(self, call: CallAudio, on_result: OnResult) -> AsrSession:
        """Start a session for ``call``.

        Raises:
            AsrError: the engine cannot start (``retryable`` tells whether a later try may work).
        """
        ...

    async def aclose(self) -> None:
        """Release shared resources (threads, models)."""
        ...
