"""Ingest's ``/metrics``: figures its read loop and publisher already count, read at scrape time.

Nothing here runs per Twilio message: the read loop (:mod:`services.ingest.streams`) keeps
counting in plain ints (``_Connection.received``, the mixer's ``packets``, the publisher's
``written_frames``…) and :func:`ingest_registry` turns them into Prometheus families when
scraped. Per-stream counts are summed over the open streams plus :class:`StreamTotals`, where
each stream's counts go when it ends, so every counter is monotonic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from services.ingest.mixer import Mixer
from shared.metrics import CollectorRegistry, ScrapeCollector, counter, gauge

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from services.ingest.streams import MediaStreams


class StreamTotals:
    """Counts of the ``/twilio`` streams that have ended (messages, packets, late packets, lost ms)."""

    __slots__ = ("late_packets", "lost_ms", "messages", "packets")

    def __init__(self) -> None:
        self.messages = 0
        self.packets = 0
        self.late_packets = 0
        self.lost_ms = 0

    def retire(self, received: int, mixer: Mixer | None) -> None:
        """Add one ended stream: ``received`` WebSocket messages and its mixer's counts."""
        self.messages += received
        if mixer is not None:
            self.packets += mixer.packets
            self.late_packets += mixer.late_packets
            self.lost_ms += mixer.lost_ms


def ingest_registry(streams: MediaStreams) -> CollectorRegistry:
    """A registry of its own for one ingest instance, read from its ``streams`` and their
    publisher and admission at scrape time (see docs/architecture.md, "Metrics")."""
    registry = CollectorRegistry()
    registry.register(ScrapeCollector(lambda: _collect(streams)))
    return registry


def _collect(streams: MediaStreams) -> Iterator[Metric]:
    totals = streams.totals
    messages, packets, late, lost_ms = (
        totals.messages,
        totals.packets,
        totals.late_packets,
        totals.lost_ms,
    )
    live = 0
    for received, mixer, started in streams.stream_counts():
        messages += received
        live += started
        if mixer is not None:
            packets += mixer.packets
            late += mixer.late_packets
            lost_ms += mixer.lost_ms
    pub = streams.publisher
    yield from (
        counter(
            "callscribe_ingest_twilio_messages",
            "WebSocket messages received on /twilio (media, start, stop, ...)",
            messages,
        ),
        counter(
            "callscribe_ingest_media_packets", "Twilio media packets placed by the mixers", packets
        ),
        counter(
            "callscribe_ingest_late_packets",
            "Media packets that arrived after their frame was written (REORDER_MS too short, or a slow network)",
            late,
        ),
        counter(
            "callscribe_ingest_lost_audio_seconds",
            "Audio Twilio never delivered, filled with silence, summed over channels",
            lost_ms / 1000,
        ),
        counter(
            "callscribe_ingest_frames_written",
            "Mixed audio frames written to Redis",
            pub.written_frames,
        ),
        counter(
            "callscribe_ingest_frames_dropped",
            "Mixed audio frames dropped because the Redis write buffer was full",
            pub.dropped_frames,
        ),
        gauge(
            "callscribe_ingest_write_buffer_frames",
            "Audio frames waiting to be written to Redis (limit: WRITE_BUFFER_FRAMES)",
            pub.buffered_frames,
        ),
        gauge(
            "callscribe_ingest_write_buffer_limit_frames",
            "WRITE_BUFFER_FRAMES: beyond this many buffered frames audio is dropped",
            streams.settings.write_buffer_frames,
        ),
        counter(
            "callscribe_ingest_calls_started", "Calls whose stream started", streams.calls_started
        ),
        counter("callscribe_ingest_calls_ended", "Calls whose stream ended", streams.calls_ended),
        gauge("callscribe_ingest_calls", "Calls streaming into this ingest now", live),
        counter(
            "callscribe_ingest_bad_messages",
            "Twilio messages refused (bad JSON, unknown event, bad payload, ...)",
            streams.bad_input,
        ),
        counter(
            "callscribe_ingest_streams_refused",
            "Streams refused at start: no valid stream token, a callSid already streamed, another account, Redis unavailable (docs/security.md)",
            sum(streams.admission.refused.values()),
        ),
        counter(
            "callscribe_ingest_redis_errors",
            "Redis writes that failed and were retried",
            pub.failed_writes,
        ),
        gauge("callscribe_ingest_redis_up", "1 when the last Redis write succeeded", pub.redis_ok),
    )
