"""Helpers shared by the transcriber tests: settings, synthetic call audio, the dentist script."""

from __future__ import annotations

import random
from pathlib import Path

from shared.settings import TranscriberSettings
from tests.fakes.deepgram import Turn, turns_from_json

FRAME_MS = 100


def settings(**overrides: object) -> TranscriberSettings:
    """Transcriber settings with test-speed timeouts; ``overrides`` win."""
    base: dict[str, object] = {
        "asr_engine": "deepgram",
        "deepgram_api_key": "test-key",
        "deepgram_url": "ws://127.0.0.1:9/v1/listen",
        "keepalive_s": 0.2,
        "connect_timeout_s": 2.0,
        "max_retries": 3,
        "final_timeout_s": 5.0,
        "read_block_ms": 50,
        # ten lease periods: a live worker's jobs are never idle that long even when a loaded
        # machine delays its lease loop; dead workers' jobs are still taken over within 1 s
        "claim_idle_ms": 1000,
        "lease_renew_s": 0.1,
        "max_calls": 4,
        "consumer": "w-test",
    }
    base.update(overrides)
    return TranscriberSettings(**base)  # type: ignore[arg-type]


def call_audio(duration_s: float, channels: int = 2, seed: int = 7) -> bytes:
    """Pseudo-random interleaved mu-law bytes: unique, so the fake can locate any slice."""
    return random.Random(seed).randbytes(int(duration_s * 8000) * channels)


def frames(audio: bytes, channels: int = 2) -> list[tuple[int, bytes]]:
    """Cut ``audio`` into ``(t_ms, pcmu)`` frames of :data:`FRAME_MS`."""
    step = 8 * FRAME_MS * channels
    return [(i // (8 * channels), audio[i : i + step]) for i in range(0, len(audio), step)]


def dentist(audio_dir: Path) -> tuple[list[Turn], float]:
    """The dentist call's turns and its length in seconds."""
    import json

    data = json.loads((audio_dir / "call_dentist.json").read_text())
    return turns_from_json(audio_dir / "call_dentist.json"), float(data["duration"])
