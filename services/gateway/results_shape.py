"""Our transcript event in Deepgram's live ``Results`` shape, for tutorial (``/client``) clients.

Pure code, no I/O. The shape is the one the Deepgram live endpoint sends
(https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming, "Results"):
``{"type": "Results", "channel_index": [channel, channels], "duration", "start", "is_final",
"speech_final", "channel": {"alternatives": [{"transcript", "confidence", "words": [...]}]}}``.
Times are seconds from the start of the call (Deepgram's own restart at 0 per connection; ours
do not, which is what a watcher wants).
"""

from __future__ import annotations

import json
from typing import Any

from shared.schema import TranscriptEvent


def to_results(event: TranscriptEvent, channels: int) -> dict[str, Any]:
    """Build the ``Results`` dict of one transcript event.

    ``channels`` is the call's channel count (1 = mono, 2 = stereo); it goes into
    ``channel_index`` as Deepgram does for ``multichannel=true``.
    """
    return {
        "type": "Results",
        "channel_index": [event.channel, max(channels, event.channel + 1)],
        "duration": round(max(event.end - event.start, 0.0), 3),
        "start": round(event.start, 3),
        "is_final": event.is_final,
        "speech_final": event.speech_final,
        "channel": {
            "alternatives": [
                {
                    "transcript": event.text,
                    "confidence": event.confidence,
                    "words": [
                        {"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence}
                        for w in event.words
                    ],
                }
            ]
        },
    }


def results_json(event_json: str, channels: int) -> str:
    """``event_json`` (a ``transcript`` event as JSON) → the ``Results`` message as JSON text.

    Raises:
        pydantic.ValidationError: ``event_json`` is not a transcript event.
    """
    event = TranscriptEvent.model_validate_json(event_json)
    return json.dumps(to_results(event, channels), separators=(",", ":"))
