"""Choosing the ASR engine a worker runs (``ASR_ENGINE``)."""

from __future__ import annotations

import importlib.util

from services.transcriber.deepgram import DeepgramEngine
from services.transcriber.engine import AsrEngine
from shared.errors import AsrError
from shared.settings import AsrEngineName, TranscriberSettings


def make_engine(settings: TranscriberSettings) -> AsrEngine:
    """``deepgram`` → :class:`DeepgramEngine`; ``whisper`` → the embedded faster-whisper engine.

    Raises:
        AsrError: ``retryable=False``: whisper was asked for but faster-whisper is not
            installed (install it with ``pip install .[whisper]``).
    """
    if settings.asr_engine is AsrEngineName.DEEPGRAM:
        return DeepgramEngine(settings)
    if importlib.util.find_spec("faster_whisper") is None:
        raise AsrError(
            "ASR_ENGINE=whisper needs faster-whisper: pip install .[whisper] "
            "(or set DEEPGRAM_API_KEY to use Deepgram)",
            retryable=False,
        )
    from services.transcriber.whisper import WhisperEngine

    engine: AsrEngine = WhisperEngine(settings)
    return engine
