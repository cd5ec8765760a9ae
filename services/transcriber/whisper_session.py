"""One call on the embedded Whisper engine: frames → utterances → interims and finals.

Each channel's audio goes through :class:`~services.transcriber.vad.ChannelVad`. While an
utterance is open, its audio so far is decoded every ``whisper_interim_s`` of audio for an
interim (greedy, no word times), **unless no speech arrived since the last one** (a pause: the
text cannot have changed). An interim decodes in the background, one at a time per channel:
the session goes on with its frames (and finals) meanwhile and publishes the interim when it
is back, unless its utterance has ended (the final supersedes it). When ``whisper_min_silence_ms`` of silence follows speech, the
utterance is decoded as a final candidate (beam search, word times, and the call's recent
finals as the prompt). If that text ends a sentence (``.``, ``?`` or ``!``) and the utterance is at
least ``min_utterance_s`` long, it is the final at once; otherwise the utterance stays open
(a breath or a comma inside a sentence): speech that resumes continues it, and after
``hold_silence_ms`` of silence the candidate becomes the final without a second decode. An
utterance reaching ``whisper_max_utterance_s`` is cut at its last pause. One segment number per
utterance, allocated when its first event is published, from ``CallAudio.first_segment`` up,
across both channels.

Padding: an utterance is decoded from ``pad_ms`` before the VAD's start (never before the end
of the audio the channel's previous final covered, so no word is decoded twice) to ``pad_ms``
after its end, so soft first and last sounds are not clipped.

Decodes go through the engine's :class:`~services.transcriber.whisper_queue.DecodeQueue`
(finals first; interims dropped when the queue is full or they went stale); VAD runs in the
engine's VAD thread. The session's task awaits each in turn, so the event loop never runs
inference and a session's events stay in order.

Over 300 lines on purpose: one channel-pair session's policies (padding, prompt, holding at
pauses, interims) act on the same utterance state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.transcriber.engine import CallAudio, OnResult
from services.transcriber.vad import ChannelVad, Closed, Opened, Paused, VadEvent
from services.transcriber.whisper_decode import EMPTY, Hypothesis
from services.transcriber.whisper_feed import FrameFeed
from shared.audio import BYTES_PER_MS, upsample2
from shared.schema import SPEAKERS, TranscriptEvent

if TYPE_CHECKING:
    from services.transcriber.whisper import WhisperEngine

log = logging.getLogger(__name__)

PROMPT_CHARS = 300
"""Characters of the call's previous finals given to Whisper as the prompt (≈ 60 words).

Both sides' finals, in the order they were published: the conversation so far. Measured on
the test calls, this scored better than each channel's own finals (call_dentist WER 0.074 vs
0.086, call_order_status 0.043 vs 0.057: the answer "four seven two nine one five" follows
the question "may I have your order number")."""

_SENTENCE_END = (".", "?", "!")


@dataclass(slots=True)
class _Utterance:
    """The open utterance of one channel, as the session tracks it (8 kHz sample indices)."""

    start8: int
    pad_before8: int
    last_interim8: int
    interim_speech8: int
    """Speech up to here was in the last interim (or before the utterance)."""
    segment: int | None = None
    candidate: tuple[int, int, Hypothesis] | None = None
    """(from8, to8, hypothesis) decoded as a final at the last pause."""
    interim: asyncio.Task[Hypothesis | None] | None = None
    """The interim decode in flight (at most one), of the audio up to ``interim_to8``."""
    interim_to8: int = 0


class WhisperSession(FrameFeed):
    """One call's :class:`~services.transcriber.engine.AsrSession` on the embedded engine.

    ``send`` only queues the frame (see :class:`~services.transcriber.whisper_feed.FrameFeed`);
    the session's task runs VAD and decodes through the engine and awaits ``on_result`` for
    each event, in order. Make it with :meth:`WhisperEngine.open`.
    """

    def __init__(
        self, engine: WhisperEngine, vad_model: object, call: CallAudio, on_result: OnResult
    ) -> None:
        super().__init__(
            call,
            engine.vad_pool,
            backlog_max_s=engine.backlog_max_s,
            interim_max_lag_s=engine.interim_max_lag_s,
        )
        s = engine.settings
        self._engine, self._on_result = engine, on_result
        origin8 = call.start_ms * BYTES_PER_MS
        self._vads = [
            ChannelVad(
                vad_model,
                origin8,
                min_silence_ms=s.whisper_min_silence_ms,
                hold_silence_ms=engine.hold_silence_ms,
                max_utterance_s=s.whisper_max_utterance_s,
                pad_ms=engine.pad_ms,
                pad_before_ms=engine.pad_before_ms,
            )
            for _ in range(call.channels)
        ]
        self._open: list[_Utterance | None] = [None] * call.channels
        self._decoded_to8 = [origin8] * call.channels
        self._history: deque[str] = deque(maxlen=12)  # the call's finals, both sides
        self._next_segment = call.first_segment
        self._interim8 = max(1, int(s.whisper_interim_s * 8000))
        self._min_utterance8 = int(engine.min_utterance_s * 8000)
        self.stats.update(
            finals=0, interims=0, interims_skipped=0, interims_unchanged=0,
            interims_dropped=0, dropped=0, candidates_reused=0,
        )  # fmt: skip

    # ------------------------------------------------------------------ FrameFeed hooks

    def _channels_append(self, samples: list[np.ndarray], gap8: int) -> list[tuple[int, VadEvent]]:
        events: list[tuple[int, VadEvent]] = []
        for ch, x in enumerate(samples):
            vad = self._vads[ch]
            if gap8:
                vad.append(np.zeros(gap8, dtype=np.float32))
            vad.append(x)
            events.extend((ch, e) for e in vad.advance())
        return events

    def _flush(self) -> list[tuple[int, VadEvent]]:
        return [(ch, e) for ch, vad in enumerate(self._vads) for e in vad.flush()]

    def _restart(self, t8: int) -> None:
        for vad in self._vads:
            vad.jump(t8)  # already flushed: no events
        self._decoded_to8 = [t8] * len(self._vads)

    async def _handle(self, events: list[tuple[int, VadEvent]], interims: bool) -> None:
        for ch, event in events:
            if isinstance(event, Opened):
                self._open[ch] = _Utterance(
                    event.start8, event.pad_before8, event.start8, event.start8
                )
            elif isinstance(event, Paused):
                await self._on_paused(ch, event)
            else:
                await self._on_closed(ch, event)
        for ch, utterance in enumerate(self._open):
            if utterance is not None:
                await self._maybe_interim(ch, utterance, interims)

    # ------------------------------------------------------------------ decisions

    def _span(self, ch: int, start8: int, pad_before8: int) -> int:
        """Where to decode an utterance starting at ``start8`` from (8 kHz index)."""
        return max(start8 - pad_before8, self._decoded_to8[ch], self._vads[ch].buffer.origin)

    async def _on_paused(self, ch: int, event: Paused) -> None:
        utterance = self._open[ch]
        if utterance is None:
            return
        a8 = self._span(ch, utterance.start8, utterance.pad_before8)
        b8 = event.end8 + self._vads[ch].pad8
        hyp = await self._decode(ch, a8, b8, final=True) or EMPTY  # finals are never dropped
        utterance.candidate = (a8, b8, hyp)
        complete = hyp.text.endswith(_SENTENCE_END) and (
            event.end8 - utterance.start8 >= self._min_utterance8
        )
        if complete or not hyp.text:
            closed = self._vads[ch].end_at_pause(event.end8)
            if closed is not None:
                await self._on_closed(ch, closed)

    async def _on_closed(self, ch: int, closed: Closed) -> None:
        utterance, self._open[ch] = self._open[ch], None
        if utterance is not None and utterance.interim is not None:
            utterance.interim.cancel()  # the final supersedes it
        published = utterance is not None and utterance.segment is not None
        hyp = EMPTY
        a8 = self._span(ch, closed.start8, closed.pad_before8)
        b8 = closed.end8 + closed.pad_after8
        if closed.keep:
            candidate = utterance.candidate if utterance is not None else None
            if candidate is not None and candidate[:2] == (a8, b8):
                hyp = candidate[2]
                self.stats["candidates_reused"] += 1
            else:
                hyp = await self._decode(ch, a8, b8, final=True) or EMPTY
        self._decoded_to8[ch] = max(self._decoded_to8[ch], b8)
        if not hyp.text and not published:  # noise or a blip: nothing to say, nothing to retract
            self.stats["dropped"] += 1
            return
        # an empty final after interims tells clients to clear the interim text
        if hyp.text:
            self._history.append(hyp.text)
        segment = self._segment(utterance)
        await self._publish(ch, segment, True, closed.endpoint, hyp, closed.start8, closed.end8)
        self.stats["finals"] += 1

    async def _maybe_interim(self, ch: int, utterance: _Utterance, allowed: bool) -> None:
        """Start an interim decode in the background when one is due (see the module doc)."""
        vad = self._vads[ch]
        position8 = vad.position8
        if utterance.interim is not None or position8 - utterance.last_interim8 < self._interim8:
            return  # one at a time: the next starts at the first frame after this one is back
        utterance.last_interim8 = position8
        if vad.last_speech8 <= utterance.interim_speech8:
            self.stats["interims_unchanged"] += 1  # nothing new was said: same text
            return
        if not allowed:
            self.stats["interims_skipped"] += 1
            return
        utterance.interim_speech8 = vad.last_speech8
        a8 = self._span(ch, utterance.start8, utterance.pad_before8)
        task = asyncio.create_task(self._decode(ch, a8, position8, final=False))
        task.add_done_callback(lambda _: self._wake.set())
        utterance.interim, utterance.interim_to8 = task, position8

    async def _deliver(self) -> None:
        for ch, utterance in enumerate(self._open):
            task = None if utterance is None else utterance.interim
            if utterance is None or task is None or not task.done():
                continue
            utterance.interim = None
            hyp = task.result()  # a failed decode fails the session, as a final's would
            if hyp is None:
                self.stats["interims_dropped"] += 1
            elif hyp.text:
                segment = self._segment(utterance)
                to8 = utterance.interim_to8
                await self._publish(ch, segment, False, False, hyp, utterance.start8, to8)
                self.stats["interims"] += 1

    def _busy(self) -> bool:
        return any(u is not None and u.interim is not None for u in self._open)

    def _discard(self) -> None:
        for utterance in self._open:
            if utterance is not None and utterance.interim is not None:
                utterance.interim.cancel()

    # ------------------------------------------------------------------ decoding, publishing

    async def _decode(self, ch: int, a8: int, b8: int, *, final: bool) -> Hypothesis | None:
        """Decode ``[a8, b8)`` of channel ``ch``; None = an interim the queue dropped."""
        engine = self._engine
        audio8 = self._vads[ch].buffer.view(a8, b8).copy()  # VAD may trim it meanwhile
        said = " ".join(self._history)
        if len(said) > PROMPT_CHARS:  # the last PROMPT_CHARS, from a word boundary
            said = said[-PROMPT_CHARS:].partition(" ")[2]
        prompt = said or None

        def job() -> Hypothesis:
            return engine.decoder.decode(
                upsample2(audio8),
                a8 / 8000,
                words=final,
                beam_size=engine.final_beam_size if final else 1,
                prompt=prompt,
                margin_s=engine.margin_s,
            )

        if final:
            return await engine.queue.final(job)
        return await engine.queue.interim(job)

    def _segment(self, utterance: _Utterance | None) -> int:
        if utterance is not None and utterance.segment is not None:
            return utterance.segment
        segment, self._next_segment = self._next_segment, self._next_segment + 1
        if utterance is not None:
            utterance.segment = segment
        return segment

    async def _publish(
        self, ch: int, segment: int, final: bool, endpoint: bool, hyp: Hypothesis, a8: int, b8: int
    ) -> None:
        """Deliver one result of speech ``[a8, b8)`` (the VAD's span; 8 kHz indices).

        The result starts where the VAD heard speech start, and no word before it: the audio
        decoded begins up to ``pad_before_ms`` earlier, and Whisper's alignment tends to stretch
        the first word back to the start of its audio (measured on the LibriVox reading:
        "Unless" put at 11.18 s, its speech starting at 11.50 s), which would make a result
        overlap the previous one. The end is the later of the VAD's and the last word's.
        """
        start_s, end_s = a8 / 8000, b8 / 8000
        words = [
            w.model_copy(update={"start": max(w.start, start_s), "end": max(w.end, start_s)})
            if w.start < start_s
            else w
            for w in hyp.words
        ]
        if words:
            end_s = max(end_s, words[-1].end)
        await self._on_result(
            TranscriptEvent(
                call_sid=self.call.call_sid,
                segment=segment,
                channel=ch,
                speaker=SPEAKERS[ch],
                is_final=final,
                speech_final=endpoint,
                start=round(start_s, 3),
                end=round(end_s, 3),
                text=hyp.text,
                confidence=hyp.confidence,
                words=words,
            )
        )
