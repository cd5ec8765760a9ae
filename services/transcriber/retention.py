"""How long a call's audio stays in Redis: it is only a buffer between ingest and the transcriber.

Audio is ≈ 21 KB per call-second in Redis (a 100 ms stereo frame is 1,600 bytes of mu-law plus
the stream's per-entry overhead), so keeping it for ``RETENTION_S`` like the transcript would
make Redis memory, not CPU, the first limit (a day of one call: ≈ 1.8 GB). What a takeover
needs is only the audio after the call's checkpoint (``resume_audio_id``): a new owner reads
from there (docs/architecture.md, "Ownership of a call"). So:

* after each checkpoint write (the MULTI of a final, or a checkpoint moved by silence), the
  owner queues ``XTRIM cs:{p}:<sid>:audio MINID ~ <checkpoint ms − AUDIO_REPLAY_S>`` in the same
  pipeline (https://redis.io/docs/latest/commands/xtrim/). The trim is approximate (``~``):
  Redis frees whole stream nodes (100 entries, 10 s of frames, by default), where an exact trim
  would only mark entries deleted inside a node and free nothing;
* ingest caps each stream with ``MAXLEN ~ AUDIO_MAXLEN`` (the hard cap, whatever the
  transcriber does: a queued call, or an engine that never checkpoints a silent channel);
* the end transaction gives the audio stream a TTL of ``AUDIO_REPLAY_S`` (at least 1 s), not
  ``RETENTION_S``: the transcript and metadata keep the long retention, audio does not.

Entry IDs are ``<t_ms>-1`` (call ms, ingest's explicit IDs) or auto IDs (wall ms), so "ms of
the checkpoint minus the window" is a valid MINID either way.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from shared import keys


def trim_floor(resume_audio_id: str, keep_s: float) -> str | None:
    """The MINID that keeps ``keep_s`` seconds of audio before ``resume_audio_id``.

    Args:
        resume_audio_id: the checkpoint, a stream ID ``"<ms>-<seq>"``; ``"0-0"`` = none yet.
        keep_s: seconds of audio kept before it (``AUDIO_REPLAY_S``), >= 0.

    Returns:
        ``"<ms>"``, or None when there is nothing to trim (no checkpoint, a malformed ID, or a
        floor at or before the stream's start).
    """
    head, _, _ = resume_audio_id.partition("-")
    try:
        floor_ms = int(head) - int(keep_s * 1000)
    except ValueError:
        return None
    return str(floor_ms) if floor_ms > 0 else None


def trim_audio(pipe: Pipeline, call_sid: str, resume_audio_id: str, keep_s: float) -> None:
    """Queue ``XTRIM cs:{p}:<sid>:audio MINID ~ <floor>`` (nothing when :func:`trim_floor` is None).

    Idempotent: a retried pipeline trims nothing more. Safe for a takeover: the new owner reads
    after ``resume_audio_id``, which is never trimmed.
    """
    floor = trim_floor(resume_audio_id, keep_s)
    if floor is not None:
        pipe.xtrim(keys.audio(call_sid), minid=floor, approximate=True)


def retire_audio(pipe: Pipeline, call_sid: str, keep_s: float) -> None:
    """Queue, in the end transaction after the call keys' ``EXPIRE … RETENTION_S``, the audio
    stream's shorter TTL: ``keep_s`` seconds (at least 1)."""
    pipe.expire(keys.audio(call_sid), max(1, round(keep_s)))
