"""Our transcript event → Deepgram's ``Results`` shape (pure)."""

from __future__ import annotations

import json

from services.gateway.results_shape import results_json
from shared.schema import TranscriptEvent, Word


def test_results_shape_matches_deepgram() -> None:
    """every field of a live Results message is there with Deepgram's names and values."""
    event = TranscriptEvent(
        call_sid="CA1",
        id="1-0",
        segment=4,
        channel=1,
        speaker="callee",
        is_final=True,
        speech_final=False,
        start=2.5,
        end=3.25,
        text="hi there",
        confidence=0.8,
        words=[Word(word="hi", start=2.5, end=2.7, confidence=0.9)],
    )
    assert json.loads(results_json(event.to_json(), 2)) == {
        "type": "Results",
        "channel_index": [1, 2],
        "duration": 0.75,
        "start": 2.5,
        "is_final": True,
        "speech_final": False,
        "channel": {
            "alternatives": [
                {
                    "transcript": "hi there",
                    "confidence": 0.8,
                    "words": [{"word": "hi", "start": 2.5, "end": 2.7, "confidence": 0.9}],
                }
            ]
        },
    }
