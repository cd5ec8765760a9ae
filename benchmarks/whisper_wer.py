"""Word error rate of the embedded Whisper engine: the model on whole channels vs streaming finals.

Usage: ``WHISPER_THREADS=1 .venv/bin/python benchmarks/whisper_wer.py [--names a,b] [--json out]``

For each recording of ``tests/data`` (see its README.md) it prints:

- **whole-file WER**: the same model (faster-whisper, tiny.en int8 unless ``WHISPER_MODEL``)
  transcribing each channel at once, as a file (``transcribe`` with its defaults: beam 5,
  conditioned on previous text, no VAD filter);
- **streaming WER**: the finals of the real :class:`~services.transcriber.whisper.WhisperEngine`
  session fed the recording's 100 ms interleaved frames, as the pipeline feeds it;
- **finals' delay** p50/max (s): from the end of a final's speech (its ``end``) to the moment it
  is delivered, in *simulated time*: frame ``k`` arrives at the end of its audio, the engine
  starts on it when it has finished the previous one, and its work takes the CPU time it
  really used (process CPU, measured per frame after :meth:`WhisperSession.drain`). With
  ``WHISPER_THREADS=1`` that is the delay of one call on one dedicated core, independent of
  what else the machine runs; it excludes ingest's frame and reorder wait (≤ 160 ms);
- **CPU-s per call-second** with interims and with finals only (process CPU over the audio
  length).

Scoring (tests/data/README.md): whisper-normalizer's ``EnglishTextNormalizer`` then
``jiwer.wer``, a channel's finals in order against its speaker's lines, channels pooled per
call (the WER of the concatenated words, so a channel counts by its number of words).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.transcriber.engine import CallAudio  # noqa: E402
from services.transcriber.whisper import WhisperEngine  # noqa: E402
from shared.audio import interleave, pcm16_to_ulaw, read_wav, ulaw_to_float32, upsample2  # noqa: E402
from shared.schema import TranscriptEvent  # noqa: E402
from shared.settings import TranscriberSettings  # noqa: E402
from tests import recordings  # noqa: E402
from tests.e2e.scoring import normalise  # noqa: E402

FRAME_MS = 100
"""Ingest's frame length: the engine gets 100 ms interleaved frames."""


def channel_references(ref: dict[str, Any]) -> list[str]:
    """Each channel's reference: its speaker's lines joined, in channel order."""
    return [
        " ".join(t["text"] for t in ref["turns"] if t["speaker"] == speaker)
        for speaker in ref["channels"]
    ]


def pooled_wer(refs: list[str], hyps: list[str]) -> float:
    """WER of every channel's words together (tests/data/README.md): normalised, jiwer."""
    r = [normalise(x) for x in refs]
    h = [normalise(x) or "<empty>" for x in hyps]
    return float(jiwer.wer(r, h))


def tracks_of(name: str) -> list[bytes]:
    """The recording's channels as mu-law byte strings (8 kHz, one byte per sample)."""
    wav = read_wav(recordings.wav(name))
    return [pcm16_to_ulaw(wav.samples[:, c]) for c in range(wav.channels)]


def whole_file(model: Any, tracks: list[bytes]) -> list[str]:
    """The model's transcript of each whole channel (faster-whisper ``transcribe`` defaults)."""
    out = []
    for track in tracks:
        audio16 = upsample2(ulaw_to_float32(track))
        segments, _ = model.transcribe(audio16, language="en", vad_filter=False)
        out.append(" ".join(s.text.strip() for s in segments))
    return out


@dataclass
class StreamRun:
    """One streaming run: every event, finals' delays (s) and the CPU the run took (s).

    ``delays_s``: simulated delivery time − end of speech, per final (module docstring).
    ``decided_s``: the end of the audio that had arrived when the final was made − end of
    speech: the part of the delay that is waiting for silence, independent of CPU speed.
    """

    events: list[TranscriptEvent] = field(default_factory=list)
    delays_s: list[float] = field(default_factory=list)
    decided_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    audio_s: float = 0.0

    def finals(self, channel: int) -> list[TranscriptEvent]:
        """The finals of ``channel`` in delivery order."""
        return [e for e in self.events if e.is_final and e.channel == channel]


async def stream(engine: WhisperEngine, tracks: list[bytes], sid: str = "CAbench") -> StreamRun:
    """Feed ``tracks`` through one session frame by frame in simulated time (see module doc)."""
    run = StreamRun(audio_s=len(tracks[0]) / 8000)
    emitted: list[tuple[TranscriptEvent, float]] = []

    async def on_result(event: TranscriptEvent) -> None:
        emitted.append((event, time.process_time()))

    session = await engine.open(CallAudio(sid, len(tracks)), on_result)
    step, free_s = 8 * FRAME_MS, 0.0
    cpu_start = time.process_time()
    for i in range(0, len(tracks[0]), step):
        frame = [t[i : i + step] for t in tracks]
        arrival_s = (i + len(frame[0])) / 8000
        start_s = max(arrival_s, free_s)
        cpu0, mark = time.process_time(), len(emitted)
        await session.send(i // 8, interleave(frame))
        await session.drain()
        free_s = start_s + time.process_time() - cpu0
        for event, cpu in emitted[mark:]:
            if event.is_final:
                run.delays_s.append(start_s + cpu - cpu0 - event.end)
                run.decided_s.append(arrival_s - event.end)
    cpu0, mark = time.process_time(), len(emitted)
    start_s = max(run.audio_s, free_s)
    await session.finish(timeout_s=120)
    for event, cpu in emitted[mark:]:
        if event.is_final and event.end < run.audio_s - 0.3:  # not cut by the end of the file
            run.delays_s.append(start_s + cpu - cpu0 - event.end)
    run.cpu_s = time.process_time() - cpu_start
    run.events = [e for e, _ in emitted]
    return run


def engine_settings() -> TranscriberSettings:
    """The transcriber settings from the environment (``WHISPER_*``), engine forced to whisper."""
    return TranscriberSettings(asr_engine="whisper")


async def measure(names: list[str], *, whole: bool = True) -> list[dict[str, Any]]:
    """Score every recording in ``names``; one dict of figures per recording (see module doc)."""
    settings = engine_settings()
    with_interims = WhisperEngine(settings, interim_max_lag_s=1e9)
    finals_only = WhisperEngine(settings, interim_max_lag_s=-1.0)
    model, _ = await with_interims.models()
    rows = []
    try:
        for name in names:
            ref = recordings.reference(name)
            tracks = tracks_of(name)
            refs = channel_references(ref)
            row: dict[str, Any] = {"name": name, "channels": len(tracks)}
            if whole:
                row["whole_wer"] = pooled_wer(refs, whole_file(model, tracks))
            run = await stream(with_interims, tracks)
            hyps = [" ".join(e.text for e in run.finals(ch)) for ch in range(len(tracks))]
            row["stream_wer"] = pooled_wer(refs, hyps)
            row["channel_wer"] = [pooled_wer([r], [h]) for r, h in zip(refs, hyps, strict=True)]
            row["delay_p50_s"] = statistics.median(run.delays_s) if run.delays_s else None
            row["delay_max_s"] = max(run.delays_s) if run.delays_s else None
            row["cpu_per_s"] = run.cpu_s / run.audio_s
            row["interims"] = sum(not e.is_final for e in run.events)
            row["finals"] = sum(e.is_final for e in run.events)
            quiet = await stream(finals_only, tracks)
            row["cpu_per_s_finals_only"] = quiet.cpu_s / quiet.audio_s
            row["audio_s"] = run.audio_s
            row["hypothesis"] = hyps
            rows.append(row)
    finally:
        await with_interims.aclose()
        await finals_only.aclose()
    return rows


async def realtime(n: int, *, stagger_s: float, names: list[str]) -> dict[str, Any]:
    """``n`` calls (``names`` in turn) streamed together at real-time pace through one engine.

    Call ``k`` starts ``k × stagger_s`` after the first. A final's delay is its delivery time
    minus the wall time its speech ended (call start + ``end``). Returns the delays' p50, p90
    and max (s), CPU-s per call-second, and the interims published and dropped.
    """
    engine = WhisperEngine(engine_settings())
    await engine.models()
    delays: list[float] = []
    counts = {"interims": 0, "finals": 0}

    async def one(k: int) -> None:
        tracks = tracks_of(names[k % len(names)])
        audio_s, step = len(tracks[0]) / 8000, 8 * FRAME_MS
        await asyncio.sleep(k * stagger_s)
        started = time.monotonic()

        async def on_result(event: TranscriptEvent) -> None:
            counts["finals" if event.is_final else "interims"] += 1
            if event.is_final and event.end < audio_s - 0.3:
                delays.append(time.monotonic() - started - event.end)

        session = await engine.open(CallAudio(f"CA{k}", len(tracks)), on_result)
        for i in range(0, len(tracks[0]), step):
            frame = [t[i : i + step] for t in tracks]
            await asyncio.sleep(max(0.0, started + (i + len(frame[0])) / 8000 - time.monotonic()))
            await session.send(i // 8, interleave(frame))
        await session.finish(timeout_s=120)

    cpu, audio_total = time.process_time(), 0.0
    try:
        async with asyncio.TaskGroup() as tg:
            for k in range(n):
                tg.create_task(one(k))
                audio_total += len(tracks_of(names[k % len(names)])[0]) / 8000
        cpu = time.process_time() - cpu
    finally:
        stats = dict(engine.queue.stats)
        await engine.aclose()
    delays.sort()
    return {
        "calls": n,
        "delay_p50_s": statistics.median(delays),
        "delay_p90_s": delays[int(0.9 * (len(delays) - 1))],
        "delay_max_s": delays[-1],
        "cpu_per_s": cpu / audio_total,
        **counts,
        "interims_dropped": stats["interims_dropped"],
    }


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:5.2f}"


def main() -> None:
    """Print the table (and optionally write it as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=",".join(recordings.NAMES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-file decode")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the hypotheses")
    parser.add_argument(
        "--concurrent",
        default="",
        help="instead: comma-separated call counts to stream together in real time "
        "(the two calls in turn; WHISPER_THREADS decode threads)",
    )
    parser.add_argument("--stagger", type=float, default=1.0, help="s between call starts")
    args = parser.parse_args()
    np.seterr(all="ignore")
    started = time.monotonic()
    if args.concurrent:
        print(f"WHISPER_THREADS={os.environ.get('WHISPER_THREADS', '(default)')}, real time")
        for n in (int(x) for x in args.concurrent.split(",")):
            calls = ["call_dentist", "call_order_status"]
            r = asyncio.run(realtime(n, stagger_s=args.stagger, names=calls))
            print(
                f"{n:3d} calls: finals' delay p50 {r['delay_p50_s']:.2f} s, p90 "
                f"{r['delay_p90_s']:.2f} s, max {r['delay_max_s']:.2f} s; CPU-s per call-second "
                f"{r['cpu_per_s']:.3f}; interims {r['interims']} published, "
                f"{r['interims_dropped']} dropped; finals {r['finals']}"
            )
        return
    rows = asyncio.run(measure(args.names.split(","), whole=not args.no_whole))
    print(
        f"WHISPER_THREADS={os.environ.get('WHISPER_THREADS', '(default)')} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    print(
        f"{'recording':32s} {'audio':>6s} {'whole':>6s} {'stream':>6s} {'per channel':>12s} "
        f"{'delay p50/max s':>16s} {'CPU-s/s interims':>17s} {'finals only':>12s}"
    )
    for r in rows:
        per = "/".join(f"{w:.3f}" for w in r["channel_wer"])
        whole = f"{r['whole_wer']:.3f}" if "whole_wer" in r else "  -  "
        print(
            f"{r['name']:32s} {r['audio_s']:5.1f}s {whole:>6s} {r['stream_wer']:6.3f} {per:>12s} "
            f"{_fmt(r['delay_p50_s']):>8s}/{_fmt(r['delay_max_s']):<7s} "
            f"{r['cpu_per_s']:17.3f} {r['cpu_per_s_finals_only']:12.3f}"
        )
        if args.verbose:
            for h in r["hypothesis"]:
                print("   ", h)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps([{**r} for r in rows], indent=1, default=asdict))


if __name__ == "__main__":
    main()
