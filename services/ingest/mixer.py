"""Mixing Twilio's per-track mono packets into contiguous interleaved frames. Pure: no I/O.

Twilio sends each track as separate mono mu-law packets (8 kHz: 8 bytes per ms, 160 bytes per
20 ms) stamped with ``timestamp``, the presentation time in ms from the stream start
(https://www.twilio.com/docs/voice/media-streams/websocket-messages). Packets can be lost, one
track can start late, packets of the two tracks interleave in any order, and the timestamps of
consecutive packets are not always 20 ms apart though each still carries 20 ms of audio (Twilio
documents no bound on that wobble). :class:`Mixer` turns this into frames of ``frame_ms``
contiguous from t=0.

Placement (time is counted in bytes per channel = samples, 8 per ms). Each track keeps a
*slot*: where its next packet goes if it follows the last one with nothing lost in between.
The packet's deviation is ``8 × timestamp − slot``:

* ``|deviation| ≤ jitter_ms`` (10 ms by default: half a 20 ms packet, the largest tolerance
  that still tells one lost or repeated packet from jitter, since those move the stamp by a
  whole packet): the packet goes to the slot, contiguous with the one before. No hole, no
  overwrite, whatever the stamp's wobble.
* otherwise the deviation is rounded to a whole number ``k`` of packet lengths; if what is left
  is within ``jitter_ms`` the packet goes ``k`` packets past the slot: ``k > 0`` is loss,
  silence (0xFF) of exactly the ``k`` lost packets; ``k < 0`` is a reordered, late or
  duplicate packet, which lands in its own slot (filling the hole its loss left, or
  overwriting its own earlier copy) without moving the track's slot.
* a deviation that is not close to a whole number of packets (packets of odd lengths) places
  the packet at ``8 × timestamp`` exactly; forward, the track resynchronises there.

Drift. Every in-sequence packet's deviation feeds a per-track moving average (weight 1/32, about
0.6 s). Zero-mean jitter leaves it near the first packet's own jitter; a track whose stamps
drift from its bytes moves it. When it passes ``DRIFT_ON_MS`` (4 ms) the track is nudged by one
sample per packet toward its timestamps (one sample repeated, or the first sample of the packet
dropped, at the packet boundary: the least audible change) until it is back within
``DRIFT_OFF_MS`` (1 ms); each nudged packet counts in ``jitter_corrections``. That corrects up
to 50 samples a second (0.6 % of clock skew; crystal clocks typically differ by under 0.01 %) and
keeps every packet of every track, hence both channels, within ``jitter_ms`` of its timestamp
(measured: stamps skewed by 0.5 % with ±2 ms of jitter stay within 9.5 ms). Jitter of up to
±2 ms never triggers a nudge (the average stays within 4 ms of the first packet); jitter of
±5 ms does not either unless the first packet itself was stamped 3 ms off or more, and then
the track is re-centred on its timestamps by about 4 ms, one sample per packet.

Over 300 lines on purpose: one state machine (slots, jitter, drift, reorder window, frame
emission) whose parts share every field; splitting it would spread one invariant over several
files.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.audio import BYTES_PER_MS, SILENCE
from shared.errors import TwilioMessageError
from shared.schema import AudioFrame

TRACK_ORDER = ("inbound", "outbound")
"""Channel 0 is the inbound track (caller), channel 1 the outbound track (callee)."""

PACKET_MS = 20
"""Audio in one Twilio media packet, ms (160 bytes of 8 kHz mu-law)."""

JITTER_MS = 10
"""Default tolerance of a packet's stamp around its contiguous slot, ms (half a 20 ms packet)."""

DRIFT_ON_MS, DRIFT_OFF_MS = 4, 1
"""A track whose average deviation passes ``DRIFT_ON_MS`` is nudged until within ``DRIFT_OFF_MS``."""

_AVERAGE_WEIGHT = 1 / 32  # of one packet in the moving average of a track's deviation
_DRIFT_ON_B, _DRIFT_OFF_B = DRIFT_ON_MS * BYTES_PER_MS, DRIFT_OFF_MS * BYTES_PER_MS


class Mixer:
    """Places track packets in time and emits complete interleaved frames.

    A packet goes to its slot (module docstring). A frame ``[a, a + frame_ms)`` is emitted once
    the call clock (the largest packet end placed over all tracks) reaches
    ``a + frame_ms + reorder_ms``: a packet that arrives before then lands in its slot even out
    of order; one that arrives later is counted in ``late_packets`` and its bytes in frames
    already emitted are dropped (placing them elsewhere would make the channels drift); the rest
    of it, when it straddles a frame start, lands. Bytes no packet covered are silence (0xFF):
    lost packets, a track that starts late, the tail of the shorter track.

    Args:
        channels: 1 (mono: channel 0 is the only track) or 2 (channel 0 inbound, 1 outbound).
        frame_ms: length of one emitted frame, ms (> 0).
        reorder_ms: how long a frame waits for late packets after its end, ms (>= 0).
        max_gap_ms: the largest jump of a packet's timestamp past the call clock, ms, accepted
            as packet loss; a larger jump is refused.
        silence_budget_ms: how far the call clock's jumps (silence no packet carried) may add
            up beyond one packet length (:data:`PACKET_MS`) per packet received, ms; None = no
            budget. Past it :meth:`add` raises ``silence_limit``: a peer cannot make the mixer
            write much more audio than it sent (a real call loses a few percent of packets).
        tracks: the Twilio track names, in channel order; default ``("inbound", "outbound")``
            cut to ``channels`` (a mono stream of only the outbound track passes
            ``("outbound",)``).
        jitter_ms: how far a packet's timestamp may stray from its contiguous slot, ms (>= 0).

    Raises:
        ValueError: ``channels`` not 1 or 2, ``len(tracks) != channels``, ``frame_ms`` <= 0,
            ``reorder_ms`` < 0 or ``jitter_ms`` < 0.

    The working memory is preallocated once: per channel a ring of
    ``1 + ceil(reorder_ms / frame_ms) + 1`` frames and a mask of the bytes packets have
    written. The only allocations per frame are the frame's ``bytes`` and its interleaving.
    """

    def __init__(
        self,
        channels: int,
        frame_ms: int,
        reorder_ms: int,
        max_gap_ms: int,
        *,
        tracks: Sequence[str] | None = None,
        jitter_ms: int = JITTER_MS,
        silence_budget_ms: int | None = None,
    ) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        if frame_ms <= 0 or reorder_ms < 0 or max_gap_ms <= 0 or jitter_ms < 0:
            raise ValueError("frame_ms, max_gap_ms must be > 0; reorder_ms, jitter_ms >= 0")
        names = tuple(tracks) if tracks is not None else TRACK_ORDER[:channels]
        if len(names) != channels or len(set(names)) != channels:
            raise ValueError(f"{channels} channel(s) need as many distinct tracks, got {names}")
        self.channels = channels
        self.frame_ms = frame_ms
        self.reorder_ms = reorder_ms
        self.max_gap_ms = max_gap_ms
        self.jitter_ms = jitter_ms
        self._channel_of = {name: i for i, name in enumerate(names)}
        self._frame_b = frame_ms * BYTES_PER_MS
        self._reorder_b = reorder_ms * BYTES_PER_MS
        self._max_gap_b = max_gap_ms * BYTES_PER_MS
        self._budget_b = None if silence_budget_ms is None else silence_budget_ms * BYTES_PER_MS
        self.jumped_b = 0
        """Bytes per channel the call clock jumped past the last packet end (silence)."""
        self._tol_b = jitter_ms * BYTES_PER_MS
        self._ring_b = (2 + -(-reorder_ms // frame_ms)) * self._frame_b
        self._buf = [bytearray([SILENCE]) * self._ring_b for _ in range(channels)]
        self._mask = [bytearray(self._ring_b) for _ in range(channels)]
        self._silence = bytes([SILENCE]) * self._frame_b
        self._ones = memoryview(b"\x01" * self._ring_b)
        self._zeros = bytes(self._frame_b)
        self._slot = [-1] * channels  # per track: where its next contiguous packet goes, bytes
        self._drift = [0.0] * channels  # per track: moving average of deviations, bytes
        self._nudge = [0] * channels  # per track: +1 / -1 while being nudged later / earlier
        self._emitted_b = 0  # start of the next frame to emit, bytes per channel
        self._clock_b = 0  # largest packet end placed over all tracks, bytes per channel
        self._closed = False
        self.packets = 0
        """Packets placed, wholly or in part (including duplicates)."""
        self.late_packets = 0
        """Packets that arrived after (the frame of) their first bytes was emitted: those bytes
        were dropped, the rest of the packet placed (often there is no rest)."""
        self.duplicate_packets = 0
        """Packets that overlapped bytes an earlier packet of the same track had written."""
        self.jitter_corrections = 0
        """Packets nudged by one sample to bring a drifting track back to its timestamps."""
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
        """The call clock: the largest packet end placed, ms, rounded up."""
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
        stamp_b = timestamp_ms * BYTES_PER_MS
        if timestamp_ms < 0 or stamp_b - self._clock_b > self._max_gap_b:
            raise TwilioMessageError(
                "bad_timestamp",
                f"timestamp {timestamp_ms} ms jumps more than {self.max_gap_ms} ms "
                f"past the call clock ({self.end_ms} ms)",
            )
        if stamp_b > self._clock_b and self._budget_b is not None:  # the clock jumps: rare
            self._spend(stamp_b - self._clock_b)
        slot = self._slot[channel]
        dev = stamp_b - slot
        tol = self._tol_b
        if slot >= 0 and -tol <= dev <= tol:  # in sequence: the common case
            start_b = slot
        else:
            start_b, dev = self._place(channel, stamp_b, len(payload))
        if start_b >= slot:  # in sequence (or after a loss): track the drift, move the slot
            drift = self._drift[channel]
            drift += (dev - drift) * _AVERAGE_WEIGHT
            nudge = self._nudge[channel]
            if nudge or drift > _DRIFT_ON_B or drift < -_DRIFT_ON_B:
                payload, drift = self._nudged(channel, payload, drift, dev)
            self._drift[channel] = drift
            self._slot[channel] = start_b + len(payload)
        if start_b < self._emitted_b:  # its first bytes' frame is out: place only the rest
            self.late_packets += 1
            late_b = self._emitted_b - start_b
            if late_b >= len(payload):
                return []
            payload = payload[late_b:]
            start_b = self._emitted_b
        self.packets += 1
        out: list[AudioFrame] = []
        end_b = start_b + len(payload)
        buf, mask, ones = self._buf[channel], self._mask[channel], self._ones
        ring_b = self._ring_b
        overlapped = False
        while start_b < end_b:
            limit = self._emitted_b + ring_b
            if start_b >= limit:  # a jump: time passes (emitting silence) until the packet fits
                self._advance(limit, out)
                continue
            at = start_b % ring_b
            stop = min(end_b, limit, start_b - at + ring_b)  # not past the ring's end either
            n = stop - start_b
            if mask.find(1, at, at + n) >= 0:
                overlapped = True
            buf[at : at + n] = payload[:n]
            mask[at : at + n] = ones[:n]
            payload = payload[n:]
            self._advance(stop, out)
            start_b = stop
        if overlapped:
            self.duplicate_packets += 1
        return out

    def _spend(self, jump_b: int) -> None:
        """Count a jump of the call clock against the silence budget.

        Raises:
            TwilioMessageError: ``silence_limit`` when the jumps exceed the budget.
        """
        budget_b = self._budget_b
        if budget_b is None:
            return
        if self.jumped_b + jump_b > budget_b + self.packets * PACKET_MS * BYTES_PER_MS:
            raise TwilioMessageError(
                "silence_limit",
                f"timestamps jump {(self.jumped_b + jump_b) // BYTES_PER_MS} ms past the audio "
                f"of {self.packets} packets: more silence than the budget allows",
            )
        self.jumped_b += jump_b

    def _place(self, channel: int, stamp_b: int, length_b: int) -> tuple[int, int]:
        """Where a packet that does not follow its track's slot goes, and its deviation there.

        The first packet of a track starts its slot at its timestamp. Otherwise the deviation
        is rounded to whole packets (loss forward, late or duplicate back); when that does not
        come within the tolerance the packet goes at its timestamp (deviation 0: forward, the
        track resynchronises there and its drift average restarts).
        """
        slot = self._slot[channel]
        if slot >= 0 and length_b:
            dev = stamp_b - slot
            k = (dev + length_b // 2) // length_b
            rest = dev - k * length_b
            if k and -self._tol_b <= rest <= self._tol_b:
                return slot + k * length_b, rest
        if stamp_b >= slot:
            self._drift[channel] = 0.0
            self._nudge[channel] = 0
        return stamp_b, 0

    def _nudged(self, channel: int, payload: bytes, drift: float, dev: int) -> tuple[bytes, float]:
        """Nudge a drifting track by one sample toward its timestamps; the payload and average.

        Starts when the average passes ``DRIFT_ON_MS``, stops once it is within
        ``DRIFT_OFF_MS``. A packet that would land beyond the tolerance is not nudged.
        """
        nudge = self._nudge[channel]
        if nudge == 0:
            nudge = 1 if drift > 0 else -1
        elif nudge * drift <= _DRIFT_OFF_B:
            self._nudge[channel] = 0
            return payload, drift
        self._nudge[channel] = nudge
        if len(payload) < 2 or not -self._tol_b < dev * nudge <= self._tol_b:
            return payload, drift
        self.jitter_corrections += 1
        if nudge > 0:  # stamps run ahead of the bytes: repeat the first sample
            return payload[:1] + payload, drift - 1
        return payload[1:], drift + 1  # stamps lag: drop the first sample

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
            ready_b = clock_b - self._reorder_b
            while self._emitted_b + self._frame_b <= ready_b:
                self._emit(self._frame_b, out)

    def _emit(self, length_b: int, out: list[AudioFrame]) -> None:
        """Emit the next frame's first ``length_b`` bytes per channel and recycle its slot."""
        at = self._emitted_b % self._ring_b
        end = at + length_b
        for ch in range(self.channels):
            self.filled_bytes[ch] += length_b - self._mask[ch].count(1, at, end)
        if self.channels == 1:
            pcmu = bytes(self._buf[0][at:end])
        else:
            mixed = bytearray(2 * length_b)
            mixed[0::2] = self._buf[0][at:end]
            mixed[1::2] = self._buf[1][at:end]
            pcmu = bytes(mixed)
        out.append(AudioFrame(t_ms=self._emitted_b // BYTES_PER_MS, pcmu=pcmu))
        for ch in range(self.channels):
            self._buf[ch][at:end] = self._silence[:length_b]
            self._mask[ch][at:end] = self._zeros[:length_b]
        self._emitted_b += length_b
        self.frames += 1
