"""Smoke test of the load benchmark (benchmarks/load.py): a few calls, nothing may be lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.loadgen.calls import plan_calls
from callscribe.twilio_messages import SimCall, twilio_messages
from tests.conftest import ROOT
from tests.fakes.load_recogniser import marker_packet

SECTIONS = (
    "## CPU, core-seconds per call-second",
    "## RSS MB: idle / steady / after the calls",
    "## Latency, ms: marker packet sent → watcher has it",
    "## Delivery",
    "## Verdict",
)


def _frames_text(raw: bytes) -> list[str]:
    """The texts of client frames masked with the zero key (what the generator writes)."""
    out = []
    while raw:
        n, head = raw[1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(raw[2:4]), 4
        out.append(raw[head + 4 : head + 4 + n].decode())
        raw = raw[head + 4 + n :]
    return out


def test_generator_sends_twilios_messages_byte_for_byte() -> None:
    """The generator's templated messages equal callscribe.twilio_client's, marker packets included."""
    (call,) = plan_calls(1, 0.0, 2.0, 2.0)
    call.t0 = 0.0
    data, marks, finished = call.due(10.0)
    assert finished and len(marks) == 1
    tracks = [bytearray(b"\xff" * 2 * 8000), bytearray(b"\xff" * 2 * 8000)]
    for j, (track, number) in call.markers.items():
        tracks[track][j * 160 : (j + 1) * 160] = marker_packet(number)
    sim = SimCall(
        [bytes(t) for t in tracks],
        call_sid=call.call_sid,
        stream_sid=call.stream_sid,
        account_sid=call.account_sid,
    )
    sent = _frames_text(call.opening() + data)
    assert sent == [text for _, text in twilio_messages(sim)]


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_load_smoke_loses_nothing(tmp_path: Path) -> None:
    """3 calls × 2 watchers of 4 s: every marker and final reaches every watcher, no frame dropped."""
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--calls", "3", "--watchers", "2",
         "--duration", "4", "--ramp", "1", "--marker-every", "1", "--no-tutorial",
         "--json", str(out), "--logs", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=80,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for section in SECTIONS:
        assert section in proc.stdout, proc.stdout
    fig = json.loads(out.read_text())["callscribe"]
    assert fig["watchers"]["subscribed"] == fig["watchers"]["ended"] == 6, fig["watchers"]
    assert fig["calls"]["errors"] == 0 and fig["watchers"]["errors"] == 0
    assert fig["markers"]["owed"] >= 3 * 2 * 3 and fig["markers"]["missing"] == 0
    assert fig["latency_ms"]["n"] == fig["markers"]["owed"]
    assert fig["finals"]["sent"] >= 3 * 2 and fig["finals"]["lost"] == 0
    assert fig["finals"]["extra"] == 0
    assert fig["frames_dropped"] == 0
    assert fig["asr_connections"] == 3 and fig["unattributed_connections"] == 0
    procs = set(fig["cpu_per_call_s"])
    assert {"ingest", "transcriber0", "gateway0", "redis", "fake", "loadgen"} <= procs
