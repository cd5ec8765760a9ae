"""Word error rate as ``tests/data/README.md`` prescribes: normalise, then jiwer per channel."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


@cache
def _normaliser() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """Fold case, punctuation and number forms ("four seven two nine" == "4729")."""
    return " ".join(_normaliser()(text).split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after normalising both."""
    return float(jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>"))


def load_reference(audio_dir: Path, name: str) -> dict[str, Any]:
    """The ``<name>.json`` beside a recording: channels, turns (speaker, start, end, text)."""
    return json.loads((audio_dir / f"{name}.json").read_text())


def reference_by_speaker(ref: dict[str, Any]) -> dict[str, str]:
    """Each speaker's lines joined in order; a mono recording's turns all go to the caller."""
    out: dict[str, list[str]] = {}
    for turn in ref["turns"]:
        out.setdefault(turn.get("speaker", "caller"), []).append(turn["text"])
    return {k: " ".join(v) for k, v in out.items()}
