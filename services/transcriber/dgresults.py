"""One call's Deepgram results across its connections: each final once, in call time.

Deepgram's ``Results`` times restart at 0 on each connection, and after a drop the session
sends again the audio sent since the channels' last finals, so speech already finalised can be
recognised a second time. :class:`CallResults` keeps what it takes to undo both:

* the connection's offset: the call time of the first frame sent on it, which
  :func:`~services.transcriber.dgproto.results_to_event` adds to every time;
* per channel, the call time its last final ends at
  (:class:`~services.transcriber.checkpoint.FinalEnds`, the rule the call pipeline's checkpoint
  applies too): a ``Results`` (final or interim) that ends no later is of audio already
  finalised, and is dropped;
* the replay buffer: the frames sent since the earliest of those finals, oldest first, at most
  ``replay_max_frames`` (older ones are forgotten, and their speech is lost after a drop).

No I/O: :mod:`services.transcriber.deepgram` feeds it the frames it sends and the messages it
receives. Parsing is :mod:`services.transcriber.dgproto`'s. Protocol reference:
https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming.
"""

from __future__ import annotations

import collections
import logging

from services.transcriber.checkpoint import FinalEnds
from services.transcriber.dgproto import (
    DeepgramMessageError,
    SegmentTracker,
    parse_message,
    parse_results,
    results_to_event,
)
from services.transcriber.engine import CallAudio
from shared.audio import BYTES_PER_MS
from shared.schema import TranscriptEvent

log = logging.getLogger(__name__)

class CallResults:
    """Turns one call's Deepgram server messages into :class:`TranscriptEvent` in call time,
    dropping results of audio already finalised, and keeps the audio to replay after a drop.

    ``call.start_ms`` counts as finalised on every channel (a call resumed mid-way);
    ``replay_max_frames``: the most frames kept for replay. Frames are ``(t_ms, pcmu)``: their
    call time in ms and interleaved mu-law bytes, ``call.channels`` bytes per sample.
    """

    def __init__(self, call: CallAudio, *, replay_max_frames: int) -> None:
        self._call = call
        self._segments = SegmentTracker(call.first_segment)
        self._final_ends = FinalEnds([call.start_ms / 1000.0] * call.channels)
        self._frame_bytes_per_ms = BYTES_PER_MS * call.channels
        self._replay: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=replay_max_frames
        )
        self._offset_s = 0.0

    def connected(self) -> int:
        """A new connection opened: its offset becomes the call time of the first frame to
        replay, or of the first frame :meth:`sent` on it. Returns how many frames it replays."""
        self._offset_s = self._replay[0][0] / 1000.0 if self._replay else -1.0
        return len(self._replay)

    def replay(self) -> list[tuple[int, bytes]]:
        """The frames sent since the channels' last finals, oldest first, to send again."""
        return list(self._replay)

    def keep(self, frame: tuple[int, bytes]) -> None:
        """Remember a new frame for replay until every channel has a final past its end."""
        self._replay.append(frame)

    def sent(self, t_ms: int) -> None:
        """A frame starting at ``t_ms`` (call time, ms) went out on the current connection."""
        if self._offset_s < 0:
            self._offset_s = t_ms / 1000.0

    def handle(self, raw: str | bytes) -> TranscriptEvent | None:
        """The event for one server message, or None when there is nothing to deliver.

        None for messages other than ``Results`` (an ``Error`` is logged as a warning), for
        malformed ones (logged with their ``DeepgramMessageError`` code, never raised), for
        results of audio already finalised, and for interims without text. A final moves its
        channel's final end on and forgets the replay frames every channel has covered.
        """
        sid = self._call.call_sid
        try:
            data = parse_message(raw)
            kind = data["type"]
            if kind != "Results":
                if kind == "Error":
                    log.warning("deepgram error message", extra={"call_sid": sid})
                else:
                    log.debug("deepgram message", extra={"call_sid": sid, "type": kind[:40]})
                return None
            results = parse_results(data)
            channel = results.channel_index[0]
            end_s = self._offset_s + results.start + results.duration
            if 0 <= channel < self._call.channels and self._final_ends.done(channel, end_s):
                return None  # already finalised (replayed audio)
            event = results_to_event(
                results,
                call_sid=sid,
                channels=self._call.channels,
                offset_s=self._offset_s,
                segments=self._segments,
            )
        except DeepgramMessageError as exc:
            log.warning("deepgram bad message", extra={"call_sid": sid, "code": exc.code})
            return None
        if results.is_final:
            self._final_ends.advance(channel, end_s)
            self._trim_replay()
        return event

    def _trim_replay(self) -> None:
        """Forget frames that end before every channel's last final."""
        covered_ms = self._final_ends.covered_s * 1000.0
        per_ms = self._frame_bytes_per_ms
        replay = self._replay
        while replay and replay[0][0] + len(replay[0][1]) / per_ms <= covered_ms + 0.5:
            replay.popleft()
