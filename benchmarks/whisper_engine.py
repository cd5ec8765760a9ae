"""CPU cost and event-loop responsiveness of the embedded Whisper engine on the recordings.

Usage: ``.venv/bin/python benchmarks/whisper_engine.py [--audio-dir DIR] [--concurrent N]``
(``--audio-dir``: where the WAVs are; by default the repository's test recordings, ``tests/data``.)

Prints, per recording, CPU seconds per second of call audio (process CPU, all threads) with
interims (``whisper_interim_s`` cadence) and finals only, fed as fast as the engine takes it;
then N copies of a call fed together in real time, with the longest event-loop stall (ms).
``benchmarks/whisper_wer.py`` measures accuracy, finals' delay and capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.transcriber.engine import CallAudio  # noqa: E402
from services.transcriber.whisper import WhisperEngine  # noqa: E402
from shared.audio import interleave, pcm16_to_ulaw, read_wav  # noqa: E402
from shared.schema import TranscriptEvent  # noqa: E402
from shared.settings import TranscriberSettings  # noqa: E402
from tests import recordings  # noqa: E402

FRAME_MS = 100
NAMES = list(recordings.NAMES)


def wav_path(audio_dir: Path | None, name: str) -> Path:
    """``<audio_dir>/<name>.wav``, or the repository's copy when ``audio_dir`` is None."""
    return recordings.wav(name) if audio_dir is None else audio_dir / f"{name}.wav"


def tracks_of(path: Path) -> list[bytes]:
    """One mu-law byte string per channel of a WAV."""
    wav = read_wav(path)
    return [pcm16_to_ulaw(wav.samples[:, c]) for c in range(wav.channels)]


async def feed(engine: WhisperEngine, sid: str, tracks: list[bytes], *, realtime: bool) -> int:
    """Stream one call through a session; returns the number of events."""
    events: list[TranscriptEvent] = []

    async def on_result(event: TranscriptEvent) -> None:
        events.append(event)

    session = await engine.open(CallAudio(sid, len(tracks)), on_result)
    step, started = 8 * FRAME_MS, time.monotonic()
    for i in range(0, len(tracks[0]), step):
        if realtime:
            await asyncio.sleep(max(0.0, started + i / 8000 - time.monotonic()))
        await session.send(i // 8, interleave([t[i : i + step] for t in tracks]))
        if not realtime:  # as fast as the engine takes it, but done with each frame (interims)
            await session.drain()
    await session.finish(timeout_s=120)
    return len(events)


async def max_stall_ms(stop: asyncio.Event) -> float:
    """Longest gap (ms) between 10 ms ticks of the event loop until ``stop`` is set."""
    worst, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        worst, last = max(worst, (now - last - 0.01) * 1000), now
    return worst


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-dir", type=Path, default=None)
    parser.add_argument("--concurrent", type=int, default=3)
    args = parser.parse_args()
    settings = TranscriberSettings(asr_engine="whisper")
    for label, lag_s in (("with interims", 1e9), ("finals only", 0.0)):
        engine = WhisperEngine(settings, interim_max_lag_s=lag_s)
        await engine.models()
        for name in NAMES:
            tracks = tracks_of(wav_path(args.audio_dir, name))
            audio_s = len(tracks[0]) / 8000
            cpu, wall = time.process_time(), time.monotonic()
            n = await feed(engine, name, tracks, realtime=False)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            print(
                f"{label:14s} {name:32s} ch={len(tracks)} audio={audio_s:5.1f}s events={n:3d} "
                f"cpu={cpu:5.2f}s cpu_per_audio_s={cpu / audio_s:.3f} wall={wall:5.2f}s"
            )
        await engine.aclose()
    engine = WhisperEngine(settings)
    await engine.models()
    tracks = tracks_of(wav_path(args.audio_dir, "call_dentist"))
    stop = asyncio.Event()
    ticker = asyncio.create_task(max_stall_ms(stop))
    cpu, wall = time.process_time(), time.monotonic()
    async with asyncio.TaskGroup() as tg:
        for k in range(args.concurrent):
            tg.create_task(feed(engine, f"CA{k}", tracks, realtime=True))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    stop.set()
    print(
        f"realtime x{args.concurrent} call_dentist: wall={wall:.1f}s cpu={cpu:.1f}s "
        f"max_loop_stall={await ticker:.1f}ms"
    )
    await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main())
