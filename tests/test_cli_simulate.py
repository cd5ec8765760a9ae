"""``callscribe simulate``: WAV loading, and real calls into a real ingest ``run()`` + redis-server."""

from __future__ import annotations

import asyncio
import random
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from callscribe.simulate import SimulateError, load_tracks, parse_params, signature_url
from callscribe.twilio_messages import PACKET_BYTES, SimCall, packets
from services.ingest import app as ingest_app
from shared import keys
from shared.audio import SILENCE, deinterleave
from shared.schema import AudioFrame, CallMeta
from shared.settings import IngestSettings

CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))
RUN_TIMEOUT_S = 30.0


def _write_wav(path: Path, channels: int, rate: int, seconds: float, width: int = 2) -> Path:
    """A tone (440 Hz left, 660 Hz right) as PCM of ``width`` bytes per sample."""
    t = np.arange(int(rate * seconds)) / rate
    tones = [np.sin(2 * np.pi * f * t) * 0.5 for f in (440.0, 660.0)[:channels]]
    x = np.stack(tones, 1)
    if width == 2:
        data = (x * 32767).astype("<i2").tobytes()
    else:
        data = ((x * 127) + 128).astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def test_load_tracks_any_wav(tmp_path: Path) -> None:
    """A 16 kHz stereo WAV is two 8 kHz tracks; an 8-bit 22.05 kHz mono WAV is one track."""
    stereo = load_tracks([_write_wav(tmp_path / "s.wav", 2, 16000, 1.0)])
    assert [len(t) for t in stereo] == [8000, 8000]
    assert stereo[0] != stereo[1]
    mono = load_tracks([_write_wav(tmp_path / "m.wav", 1, 22050, 0.5, width=1)])
    assert [len(t) for t in mono] == [4000]


def test_two_mono_files_are_caller_and_callee_padded(tmp_path: Path) -> None:
    """Two mono files: first is the caller, second the callee; the shorter is padded with silence."""
    a = _write_wav(tmp_path / "a.wav", 1, 8000, 1.0)
    b = _write_wav(tmp_path / "b.wav", 1, 8000, 0.5)
    caller, callee = load_tracks([a, b])
    assert len(caller) == len(callee) == 8000
    assert callee[4000:] == bytes([SILENCE]) * 4000
    assert caller == load_tracks([a])[0]


def test_bad_audio_arguments_are_clear_errors(tmp_path: Path) -> None:
    """Missing files, non-WAV files, stereo pairs and three files raise SimulateError, not a crash."""
    (tmp_path / "x.wav").write_bytes(b"not a wav at all")
    s = _write_wav(tmp_path / "s.wav", 2, 8000, 0.1)
    for paths in ([tmp_path / "nope.wav"], [tmp_path / "x.wav"], [s, s], [s, s, s], []):
        with pytest.raises(SimulateError):
            load_tracks(paths)


def test_params_and_signature_url() -> None:
    """--param K=V parses to a dict; the public URL becomes the wss://…/twilio Twilio signs."""
    assert parse_params(["From=+15550100", "To=+1555=0199"]) == {
        "From": "+15550100",
        "To": "+1555=0199",
    }
    with pytest.raises(SimulateError):
        parse_params(["novalue"])
    assert signature_url("https://abc.ngrok.app") == "wss://abc.ngrok.app/twilio"
    assert signature_url("http://h:5000/") == "ws://h:5000/twilio"
    assert signature_url("https://h/custom/path") == "wss://h/custom/path"


async def _read_audio(redis, call_sid: str) -> tuple[bytes, int]:
    """The call's whole audio stream (interleaved) and its eof time, ms; waits for eof."""
    chunks: list[bytes] = []
    last = "0"
    expected_t = 0
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while True:
            reply = await redis.xread({keys.audio(call_sid): last}, block=1000)
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id
                    frame = AudioFrame.from_redis(fields)
                    assert frame.t_ms == expected_t, "frames are contiguous from 0"
                    if frame.eof:
                        return b"".join(chunks), frame.t_ms
                    chunks.append(frame.pcmu)
                    expected_t += len(frame.pcmu) // 16


async def test_simulate_two_lossy_calls_into_ingest(redis_url: str, redis, tmp_path: Path) -> None:
    """Two calls get distinct SIDs; lost packets and a late outbound track become silence in place."""
    settings = IngestSettings(host="127.0.0.1", port=0, redis_url=redis_url, twilio_insecure=True)
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    wav = _write_wav(tmp_path / "call.wav", 2, 16000, 1.0)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(ingest_app.run(settings, stop=stop, bound=bound))
        try:
            port = await asyncio.wait_for(bound, RUN_TIMEOUT_S)
            proc = await asyncio.create_subprocess_exec(
                CALLSCRIBE, "simulate", str(wav), "--ingest", f"ws://127.0.0.1:{port}/twilio",
                "--speed", "0", "--calls", "2", "--loss", "0.3", "--seed", "7",
                "--outbound-delay-ms", "300", "--param", "From=+15550100",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
            text = out.decode()
            assert proc.returncode == 0, text + err.decode()
            started = dict(re.findall(r"call (\d)/2 (CA[0-9a-f]{32}) started", text))
            assert set(started) == {"1", "2"}
            assert started["1"] != started["2"]
            assert len(re.findall(r"finished: sent_packets=\d+ dropped_packets=[1-9]", text)) == 2
            tracks = load_tracks([wav])
            for index, sid in started.items():
                audio, eof_ms = await _read_audio(redis, sid)
                meta = CallMeta.from_redis(await redis.hgetall(keys.meta(sid)))
                assert meta.channels == 2
                assert meta.from_ == "+15550100"  # ingest files the From parameter as the caller
                caller, callee = (bytes(c) for c in deinterleave(audio, 2))
                # replay the simulator's packet choice for this call (seed 7 + index)
                call = SimCall(
                    tracks=tracks, loss=0.3, seed=7 + int(index) - 1, outbound_delay_ms=300
                )
                assert callee[: 300 * 8] == bytes([SILENCE]) * (300 * 8), "late outbound = silence"
                lost = 0
                for ts, ch, _name, _chunk, payload, dropped in packets(
                    call, random.Random(call.seed)
                ):
                    got = (caller, callee)[ch][ts * 8 : ts * 8 + PACKET_BYTES]
                    if len(got) < PACKET_BYTES:
                        continue  # past the last packet ingest saw (a lost tail)
                    if dropped:
                        lost += 1
                        assert got == bytes([SILENCE]) * PACKET_BYTES, f"lost packet at {ts} ms"
                    else:
                        assert got == payload, f"packet at {ts} ms on channel {ch}"
                assert lost > 0
                assert 900 <= eof_ms <= 1000
        finally:
            stop.set()


def test_summary_counts_are_readable() -> None:
    """The per-call summary rounds seconds and leaves out the internal monotonic clock reading."""
    from callscribe.simulate import _fmt_counts

    counts = {"sent_packets": 2559, "duration_s": 9.310154967000017, "close_code": None,
              "t0_monotonic": 3144.198302527}  # fmt: skip
    assert _fmt_counts(counts) == "sent_packets=2559 duration_s=9.3 close_code=None"
