"""The fake Deepgram's load mode (used by benchmarks/load.py): markers, cadence, /stats."""

from __future__ import annotations

import asyncio
import json

import httpx
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from tests.fakes.deepgram import FakeDeepgram, wait_closed
from tests.fakes.load_recogniser import (
    PACKET_BYTES,
    LoadRecogniser,
    LoadScript,
    MarkerScanner,
    marker_packet,
)

SILENT = b"\xff" * PACKET_BYTES


def _stereo(left: bytes, right: bytes) -> bytes:
    out = bytearray(len(left) * 2)
    out[0::2], out[1::2] = left, right
    return bytes(out)


@given(
    numbers=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5),
    cuts=st.lists(st.integers(1, 400), max_size=20),
)
def test_scanner_finds_every_marker_whatever_the_chunking(
    numbers: list[int], cuts: list[int]
) -> None:
    """Markers in a mono stream are found once each, in order, however the bytes are cut."""
    data = b"".join(SILENT * 3 + marker_packet(n) for n in numbers) + SILENT
    scanner, found, pos = MarkerScanner(), [], 0
    for cut in cuts:
        found += scanner.feed(data[pos : pos + cut])
        pos += cut
    found += scanner.feed(data[pos:])
    assert found == numbers


def test_recogniser_cadence_and_marker_on_one_channel() -> None:
    """Interims every 1 s, finals every 3 s per channel; a marker is answered at once, on its channel."""
    rec = LoadRecogniser(LoadScript(1.0, 3.0), 2, interim=True)
    frame = _stereo(SILENT * 5, SILENT * 5)  # 100 ms
    results = []
    for _ in range(30):
        results += rec.audio(frame)
    assert [r[4] for r in results if r[0] == 0] == [False, False, True] * 1
    marked = _stereo(SILENT * 5, SILENT * 2 + marker_packet(77) + SILENT * 2)
    now = rec.audio(marked)
    assert [(r[0], r[4], [w[0] for w in r[3]]) for r in now] == [(1, False, ["mk77"])]
    assert rec.markers == [77]
    assert rec.finals == 2 and rec.interims == 5


def test_recogniser_without_interims_answers_a_marker_with_a_final() -> None:
    """With interim_results off (the tutorial's query) a marker closes the segment at once."""
    rec = LoadRecogniser(LoadScript(), 1, interim=False)
    assert rec.audio(SILENT * 5) == []
    (result,) = rec.audio(marker_packet(5))
    assert result[4] is True and [w[0] for w in result[3]] == ["mk5"]
    assert rec.flush() == []


async def test_fake_in_load_mode_echoes_markers_and_reports_stats() -> None:
    """Over a real socket: the marker's interim comes back, an empty frame closes, /stats counts."""
    async with FakeDeepgram([], load=LoadScript()) as dg:
        url = dg.url + "?encoding=mulaw&sample_rate=8000&channels=2&multichannel=true"
        url += "&interim_results=true"
        headers = {"Authorization": "Token test-key"}
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(_stereo(marker_packet(123), SILENT))
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert first["channel"]["alternatives"][0]["transcript"] == "mk123"
            assert first["channel_index"] == [0, 2] and first["is_final"] is False
            await ws.send(b"")
            rest = [json.loads(m) async for m in ws]
        assert [m["type"] for m in rest] == ["Results", "Metadata"]
        assert rest[0]["is_final"] is True
        await wait_closed(dg)
        async with httpx.AsyncClient(timeout=5) as client:
            stats = (
                await client.get(dg.url.replace("ws://", "http://").replace("/v1/listen", "/stats"))
            ).json()
    [conn] = stats["connections"]
    assert isinstance(conn.pop("opened_at"), float)
    assert conn == {"markers": [123], "finals": 1, "interims": 1, "audio_bytes": 320, "closed": True}
