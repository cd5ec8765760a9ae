"""The embedded offline engine: faster-whisper on CPU, utterances cut by Silero VAD.

Whisper is not a streaming recogniser: a session (:mod:`services.transcriber.whisper_session`)
cuts each channel into utterances and decodes them, an interim about every
``whisper_interim_s`` while one is open and a final when it ends.

Threads: one engine per worker process loads the model once (lazily, in a thread) and shares
it between all its calls through one :class:`~services.transcriber.whisper_queue.DecodeQueue`
of ``whisper_threads`` decode threads (each decode runs on one CPU thread: several small
decodes at once use the cores better than one decode on several), finals before interims,
and one thread for VAD, so the event loop never runs inference. When a session lags real time
by more than ``interim_max_lag_s`` its interims are skipped; finals never are. ``send`` applies
back-pressure once ``backlog_max_s`` of audio waits unprocessed.

OpenMP: CTranslate2 ships libgomp, which reads ``OMP_NUM_THREADS`` once, when it is loaded,
and by default keeps a thread per core that spins between decodes; each decode here runs on
one thread anyway, and that spinning cost 40 % more CPU per decode (tiny.en, 1 s utterance:
0.089 vs 0.054 CPU-s). So importing this module sets ``OMP_NUM_THREADS=1`` unless it is set
already; it works when this module is imported before ``faster_whisper`` or ``ctranslate2``
(as the transcriber and the demo do).

faster-whisper: https://github.com/SYSTRAN/faster-whisper (``WhisperModel.transcribe``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.transcriber.engine import CallAudio, OnResult
from services.transcriber.whisper_decode import Decoder, default_model_path
from services.transcriber.whisper_queue import DecodeQueue
from services.transcriber.whisper_session import WhisperSession
from shared.errors import AsrError
from shared.settings import TranscriberSettings

log = logging.getLogger(__name__)

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before libgomp loads: see the module docstring


class WhisperEngine:
    """The ``whisper`` :class:`~services.transcriber.engine.AsrEngine`: one per worker process.

    ``settings``: ``whisper_model`` (a directory, or a model name already in the local
    Hugging Face cache: nothing is ever downloaded; empty = :func:`default_model_path`),
    ``whisper_threads``, ``whisper_interim_s``, ``whisper_min_silence_ms``,
    ``whisper_max_utterance_s``. ``interim_max_lag_s``: interims are skipped while a session
    processes audio that arrived longer ago than this (s). ``backlog_max_s``: ``send`` waits
    while more audio than this (s) is queued in a session. ``hold_silence_ms``: silence that
    ends an utterance even when its text does not end a sentence; ``min_utterance_s``: a
    shorter utterance is held like one that does not end a sentence (see
    :mod:`~services.transcriber.whisper_session`). ``pad_ms``: audio decoded after an
    utterance's end, ``pad_before_ms`` before its start (Silero's start comes up to ≈ 0.5 s
    after a soft first word). ``final_beam_size``: beam width of finals (interims are greedy).
    ``margin_s``: padding encoded after an utterance instead of Whisper's 30 s window (None =
    the full window). ``max_interims``: interims the decode queue holds at most.
    ``decoder``: decode with this object (same ``decode`` signature as :class:`Decoder`)
    instead of loading the Whisper model; only the VAD model is loaded (tests).
    """

    name = "whisper"

    def __init__(
        self,
        settings: TranscriberSettings,
        *,
        interim_max_lag_s: float = 2.0,
        backlog_max_s: float = 5.0,
        hold_silence_ms: int = 1000,
        min_utterance_s: float = 1.5,
        pad_ms: int = 400,
        pad_before_ms: int = 800,
        final_beam_size: int = 5,
        margin_s: float | None = 3.0,
        max_interims: int = 8,
        decoder: Decoder | None = None,
    ) -> None:
        self.settings = settings
        self.interim_max_lag_s = interim_max_lag_s
        self.backlog_max_s = backlog_max_s
        self.hold_silence_ms = hold_silence_ms
        self.min_utterance_s = min_utterance_s
        self.pad_ms = pad_ms
        self.pad_before_ms = pad_before_ms
        self.final_beam_size = final_beam_size
        self.margin_s = margin_s
        self.queue = DecodeQueue(settings.whisper_threads, max_interims=max_interims)
        self.vad_pool = ThreadPoolExecutor(1, thread_name_prefix="whisper-vad")
        self._decoder: Decoder | None = decoder
        self._models: tuple[Any, Any] | None = None
        self._load_lock = asyncio.Lock()
        self._closed = False

    async def models(self) -> tuple[Any, Any]:
        """The (Whisper, Silero VAD) models, loaded once in a thread on first use.

        Raises:
            AsrError: the model cannot be loaded (missing directory, not installed); not retryable.
        """
        if self._models is not None:
            return self._models
        async with self._load_lock:
            if self._models is None:
                loop = asyncio.get_running_loop()
                models = await loop.run_in_executor(self.vad_pool, self._load)
                if self._decoder is None:
                    self._decoder = Decoder(models[0])
                self._models = models
        return self._models

    @property
    def decoder(self) -> Decoder:
        """The shared :class:`Decoder` (after :meth:`models`).

        Raises:
            AsrError: the model is not loaded (or the engine is closed); not retryable.
        """
        if self._decoder is None:
            raise AsrError("the whisper model is not loaded", retryable=False)
        return self._decoder

    def _load(self) -> tuple[Any, Any]:
        path = self.settings.whisper_model or default_model_path()
        started = time.monotonic()
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.vad import get_vad_model

            if self._decoder is not None:  # injected: the VAD model only
                return self._decoder.model, get_vad_model()
            model = WhisperModel(
                path,
                device="cpu",
                compute_type="int8",
                cpu_threads=1,
                num_workers=self.settings.whisper_threads,
                local_files_only=True,
            )
            vad = get_vad_model()
        except Exception as exc:  # any load failure is final for this configuration
            raise AsrError(
                f"cannot load the Whisper model {Path(path).name!r}: {exc.__class__.__name__}: {exc}",
                retryable=False,
            ) from exc
        log.info(
            "whisper model loaded",
            extra={"model": Path(path).name, "load_s": round(time.monotonic() - started, 2)},
        )
        return model, vad

    async def open(self, call: CallAudio, on_result: OnResult) -> WhisperSession:
        """Start a session for ``call`` (loads the model on first use).

        Raises:
            AsrError: the model cannot be loaded, the engine is closed, or ``call.channels`` is
                not 1 or 2 (not retryable).
        """
        if self._closed:
            raise AsrError("the whisper engine is closed", retryable=False)
        if call.channels not in (1, 2):
            raise AsrError(f"{call.channels} channels: expected 1 or 2", retryable=False)
        _, vad = await self.models()
        session = WhisperSession(self, vad, call, on_result)
        session.start()
        return session

    async def aclose(self) -> None:
        """Stop the decode queue and the VAD thread (running inference finishes in the background)."""
        self.close()

    def close(self) -> None:
        """:meth:`aclose` for code outside a coroutine (idempotent)."""
        self._closed = True
        self.queue.shutdown()
        self.vad_pool.shutdown(wait=False, cancel_futures=True)
        self._models = self._decoder = None
