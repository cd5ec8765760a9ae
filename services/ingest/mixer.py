"""Mixing Twilio's per-track mono packets into contiguous interleaved frames. Pure: no I/O.

Twilio sends each track as separate mono mu-law packets (8 kHz: 8 bytes per ms, 160 bytes per
20 ms) stamped with ``timestamp`` = ms from the stream start
(https://www.twilio.com/docs/voice/media-streams/websocket-messages). Packets can be lost, one
track can start late and packets of the two tracks interleave in any order. :class:`Mixer` puts
every byte where its timestamp says, fills what never came with silence (0xFF) and cuts the
result into frames of ``frame_ms`` that are contiguous from t=0, so the two channels never drift.

Time inside the mixer is counted in bytes per channel (= samples, 8 per ms), so payloads whose
length is not a whole number of ms are still placed exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.audio import BYTES_PER_MS, SILENCE
from shared.errors import TwilioMessageError
from shared.schema import AudioFrame

TRACK_ORDER = ("inbound", "outbound")
"""Channel 0 is the inbound track (caller), channel 1 the outbound track (callee)."""


class Mixer:
    """Places track packets in time and emits complete interleaved frames.

    A frame ``[a, a + frame_ms)`` is emitted once the call clock (the largest packet end seen
    over all tracks) reaches ``a + frame_ms + reorder_ms``: a packet that arrives before then
    lands at its time even out of order; one that arrives later is counted in ``late_packets``
    and its bytes in frames already emitted are dropped (placing them anywhere else would make
    the channels drift); the rest of it, when it straddles a frame start, lands. Bytes no packet
    covered are silence (0xFF): lost packets, a track that starts late, the tail of the shorter
    track. A duplicate packet overwrites the same bytes, so it lands once.

    Args:
        channels: 1 (mono: channel 0 is the only track) or 2 (channel 0 inbound, 1 outbound).
        frame_ms: length of one emitted frame, ms (> 0).
        reorder_ms: how long a frame waits for late packets after its end, ms (>= 0).
        max_gap_ms: the largest jump of a packet's timestamp past the call clock, ms, accepted
            as packet loss; a larger jump is refused.
        tracks: the Twilio track names, in channel order; default ``("inbound", "outbound")``
            cut to ``channels`` (a mono stream of only the outbound track passes
            ``("outbound",)``).

    Raises:
        ValueError: ``channels`` not 1 or 2, ``len(tracks) != channels``, ``frame_ms`` <= 0 or
            ``reorder_ms`` < 0.

    The working memory is preallocated once: a ring of ``1 + ceil(reorder_ms / frame_ms) + 1``
    frames per channel, plus a mask of the bytes packets have written. The only allocation per
    frame is the frame's ``bytes``.
    """

    def __init__(
        self,
        channels: int,
        frame_ms: int,
        reorder_ms: int,
        max_gap_ms: int,
        *,
        tracks: Sequence[str] | None = None,
    ) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        if frame_ms <= 0 or reorder_ms < 0 or max_gap_ms <= 0:
            raise ValueError("frame_ms and max_gap_ms must be > 0 and reorder_ms >= 0")
        names = tuple(tracks) if tracks is not None else TRACK_ORDER[:channels]
        if len(names) != channels or len(set(names)) != channels:
            raise ValueError(f"{channels} channel(s) need as many distinct tracks, got {names}")
        self.channels = channels
        self.frame_ms = frame_ms
        self.reorder_ms = reorder_ms
        self.max_gap_ms = max_gap_ms
        self._channel_of = {name: i for i, name in enumerate(names)}
        self._frame_b = frame_ms * BYTES_PER_MS
        self._reorder_b = reorder_ms * BYTES_PER_MS
        self._max_gap_b = max_gap_ms * BYTES_PER_MS
        self._slots = 2 + -(-reorder_ms // frame_ms)
        self._ring = np.full((self._slots, self._frame_b, channels), SILENCE, dtype=np.uint8)
        self._mask = np.zeros((self._slots, self._frame_b, channels), dtype=bool)
        self._emitted_b = 0  # start of the next frame to emit, bytes per channel
        self._clock_b = 0  # largest packet end seen over all tracks, bytes per channel
        self._closed = False
        self.packets = 0
        """Packets placed, wholly or in part (including duplicates)."""
        self.late_packets = 0
        """Packets that arrived after (the frame of) their first bytes was emitted: those bytes
        were dropped, the rest of the packet placed (often there is no rest)."""
        self.duplicate_packets = 0
        """Packets that overlapped bytes an earlier packet of the same track had written."""
        self.frames = 0
        """Frames emitted."""
        self.filled_bytes = [0] * channels
        """Per channel, bytes emitted as silence because no packet covered them."""

    @property
    def lost_ms(self) -> int:
        """Silence filled in for missing audio, ms summed over channels (bytes // 8)."""
        return sum(self.filled_bytes) // BYTES_PER_MS

    @property
    def end_ms(self) -> int:
        """The call clock: the largest packet end seen, ms, rounded up."""
        return -(-self._clock_b // BYTES_PER_MS)

    def add(self, track: str, timestamp_ms: int, payload: bytes) -> list[AudioFrame]:
        """Place ``payload`` (mu-law bytes of one track) at ``timestamp_ms``; return frames now complete.

        Returns the frames (oldest first) that this packet completed; usually none or one.

        Raises:
            TwilioMessageError: ``unknown_track`` (a track this mixer was not built for),
                ``bad_timestamp`` (negative, or more than ``max_gap_ms`` past the call clock;
                the packet is not placed).
            RuntimeError: the mixer was already flushed.
        """
        if self._closed:
            raise RuntimeError("mixer already flushed")
        channel = self._channel_of.get(track)
        if channel is None:
            raise TwilioMessageError("unknown_track", f"track {track[:20]!r} is not in this stream")
        start_b = timestamp_ms * BYTES_PER_MS
        if timestamp_ms < 0 or start_b - self._clock_b > self._max_gap_b:
            raise TwilioMessageError(
                "bad_timestamp",
                f"timestamp {timestamp_ms} ms jumps more than {self.max_gap_ms} ms "
                f"past the call clock ({self.end_ms} ms)",
            )
        data = np.frombuffer(payload, dtype=np.uint8)
        if start_b < self._emitted_b:  # its first bytes' frame is out: place only the rest
            self.late_packets += 1
            late_b = self._emitted_b - start_b
            if late_b >= len(data):
                return []
            data = data[late_b:]
            start_b = self._emitted_b
        self.packets += 1
        out: list[AudioFrame] = []
        end_b = start_b + len(data)
        pos = start_b
        overlapped = False
        while pos < end_b:
            limit = self._emitted_b + self._slots * self._frame_b
            if pos >= limit:  # a jump: time passes (emitting silence) until the packet fits
                self._advance(limit, out)
                continue
            slot, off = divmod(pos, self._frame_b)
            slot %= self._slots
            stop = min(end_b, limit, pos - off + self._frame_b)
            piece = data[pos - start_b : stop - start_b]
            mask = self._mask[slot, off : off + len(piece), channel]
            if not overlapped and mask.any():
                overlapped = True
            self._ring[slot, off : off + len(piece), channel] = piece
            mask[:] = True
            pos = stop
            self._advance(pos, out)
        if overlapped:
            self.duplicate_packets += 1
        return out

    def flush(self) -> list[AudioFrame]:
        """Emit everything left: the stream has ended. The mixer cannot be used afterwards.

        Both channels are padded with silence to the same end: the largest packet end over all
        tracks, rounded up to a whole ms. The last frame may be shorter than ``frame_ms``.
        Returns ``[]`` when there is nothing left (and on a second call).
        """
        if self._closed:
            return []
        self._closed = True
        end_b = self.end_ms * BYTES_PER_MS
        out: list[AudioFrame] = []
        while self._emitted_b < end_b:
            self._emit(min(self._frame_b, end_b - self._emitted_b), out)
        return out

    def _advance(self, clock_b: int, out: list[AudioFrame]) -> None:
        """Move the call clock to ``clock_b`` (if later) and emit every frame that completes."""
        if clock_b > self._clock_b:
            self._clock_b = clock_b
        ready_b = self._clock_b - self._reorder_b
        while self._emitted_b + self._frame_b <= ready_b:
            self._emit(self._frame_b, out)

    def _emit(self, length_b: int, out: list[AudioFrame]) -> None:
        """Emit the next frame's first ``length_b`` bytes per channel and recycle its slot."""
        slot = (self._emitted_b // self._frame_b) % self._slots
        window = self._ring[slot]
        mask = self._mask[slot]
        for ch in range(self.channels):
            self.filled_bytes[ch] += length_b - int(np.count_nonzero(mask[:length_b, ch]))
        out.append(
            AudioFrame(t_ms=self._emitted_b // BYTES_PER_MS, pcmu=window[:length_b].tobytes())
        )
        window.fill(SILENCE)
        mask.fill(False)
        self._emitted_b += length_b
        self.frames += 1
