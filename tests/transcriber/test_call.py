"""CallPipeline's result filter: no audio span of a channel is finalised twice (calls served
through run() with a scripted engine)."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from shared import keys
from shared.schema import CallMeta, TranscriptEvent, Word
from tests.transcriber.dgutil import settings
from tests.transcriber.scripted import serve_call

SID = "CA00000000000000000000000000000077"


async def start_call(redis: aioredis.Redis, final_end_s: list[float]) -> None:
    """A stereo call's meta whose checkpoint says its channels are final up to ``final_end_s``."""
    fields = CallMeta(call_sid=SID).to_redis()
    fields.update({f"final_end_s_{ch}": str(end) for ch, end in enumerate(final_end_s)})
    await redis.hset(keys.meta(SID), mapping=fields)  # type: ignore[arg-type]


def event(start: float, end: float, words: list[tuple[str, float, float]]) -> TranscriptEvent:
    """A channel-0 final with ``words`` as ``(word, start, end)``."""
    return TranscriptEvent(
        call_sid=SID,
        segment=3,
        channel=0,
        speaker="caller",
        is_final=True,
        start=start,
        end=end,
        text=" ".join(w for w, _, _ in words),
        words=[Word(word=w, start=s, end=e) for w, s, e in words],
    )


async def test_final_straddling_the_last_final_keeps_only_new_words(
    redis: aioredis.Redis,
) -> None:
    """A resumed session re-hears finalised words of the channel ahead: only new words are stored."""
    await start_call(redis, [20.1, 12.0])
    words = [("old", 13.0, 14.0), ("older", 19.5, 20.0), ("new", 20.5, 21.0), ("words.", 21, 21.8)]
    call = await serve_call(redis, SID, [event(12.0, 22.0, words)], settings())
    [(_, fields)] = await redis.xrange(keys.transcript(SID))
    stored = TranscriptEvent.from_history("1-0", fields)
    assert stored.text == "new words."
    assert [w.word for w in stored.words] == ["new", "words."]
    assert stored.start == 20.1 and stored.end == 22.0
    assert call.checkpoint.final_ends.ends[0] == 22.0


async def test_final_with_only_finalised_words_is_dropped(redis: aioredis.Redis) -> None:
    """A straddling final whose words were all finalised before stores nothing."""
    await start_call(redis, [20.1, 12.0])
    stale = event(12.0, 20.4, [("old", 13.0, 14.0), ("older", 19.5, 20.0)])
    await serve_call(redis, SID, [stale], settings())
    assert await redis.xlen(keys.transcript(SID)) == 0


async def test_empty_final_clears_a_shown_interim_but_silence_is_not_stored(
    redis: aioredis.Redis,
) -> None:
    """An empty final for a segment whose interim was published is stored and published (the
    client clears the interim); one for a stretch of silence only moves the checkpoint."""
    await start_call(redis, [0.0, 0.0])
    live = redis.pubsub()
    await live.subscribe(keys.live(SID))
    interim = event(1.0, 2.0, [("uh", 1.0, 2.0)]).model_copy(update={"is_final": False})
    cleared = event(1.0, 2.5, []).model_copy(update={"text": ""})
    silence = event(2.5, 9.0, []).model_copy(
        update={"text": "", "segment": 4, "channel": 1, "speaker": "callee"}
    )
    call = await serve_call(redis, SID, [interim, cleared, silence], settings())
    [(entry_id, fields)] = await redis.xrange(keys.transcript(SID))
    assert TranscriptEvent.from_history(entry_id, fields).text == ""
    published = []
    async with asyncio.timeout(5):
        while True:  # everything the call published, up to its end event
            msg = await live.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            if json.loads(msg["data"])["type"] == "end":
                break
            published.append(TranscriptEvent.model_validate_json(msg["data"]))
    await live.aclose()
    assert [(e.is_final, e.text, e.segment) for e in published] == [(False, "uh", 3), (True, "", 3)]
    checkpoint = call.checkpoint.to_meta()
    assert checkpoint.pop("resume_audio_id") != "0-0"  # both channels cover the one frame
    assert checkpoint == {
        "next_segment": "5",
        "final_end_s_0": "2.500",
        "final_end_s_1": "9.000",
    }
