"""Ingest's ``/metrics``: the Prometheus text format, and counters that move with a call."""

from __future__ import annotations

from callscribe.twilio_client import SimCall, stream_call
from tests.metrics_util import scrape

from .conftest import read_audio


async def test_metrics_parse_and_count_a_streamed_call(ingest, redis, call_tracks) -> None:
    """After a 2 s two-track call, messages, packets, frames and calls in /metrics have moved."""
    call = SimCall(tracks=call_tracks)
    async with ingest() as port:
        url = f"http://127.0.0.1:{port}/metrics"
        before = await scrape(url)
        result = await stream_call(f"ws://127.0.0.1:{port}/twilio", call, speed=0)
        await read_audio(redis, call.call_sid)  # every frame is in Redis
        after = await scrape(url)
    assert before["callscribe_ingest_twilio_messages_total"] == 0
    assert before["callscribe_ingest_calls"] == 0
    packets = result["sent_packets"]
    # connected, start, the media packets, stop
    assert after["callscribe_ingest_twilio_messages_total"] == packets + 3
    assert after["callscribe_ingest_media_packets_total"] == packets
    assert after["callscribe_ingest_frames_written_total"] == 20  # 2 s of 100 ms frames
    assert after["callscribe_ingest_frames_dropped_total"] == 0
    assert after["callscribe_ingest_calls_started_total"] == 1
    assert after["callscribe_ingest_calls_ended_total"] == 1
    assert after["callscribe_ingest_write_buffer_frames"] == 0
    assert after["callscribe_ingest_redis_up"] == 1
    assert after["callscribe_ingest_redis_errors_total"] == 0
