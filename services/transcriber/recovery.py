"""A Redis that lost a live call's keys (restarted without persistence): the owner rebuilds them.

Found by the lease loop (``services.transcriber.lease``, every ``LEASE_RENEW_S``): a job of
ours that is no longer pending under our name is either *taken* (its entry still exists: another
worker claimed it, and we stop serving the call) or *vanished* (the entry is gone: only an empty
Redis does that, since a job is deleted only by the end transaction of its own owner). A call
whose meta hash has no ``call_sid`` any more has vanished too, whatever its job.

The owner still holds everything the call needs in memory: its metadata, its checkpoint and
its open ASR session, and ingest keeps writing the call's audio (its IDs are call times, so
they stay above the owner's read position in the new stream). :func:`restore` writes back, in
one MULTI on the call's hash slot: the meta hash (metadata, ``status=live``, the checkpoint,
the new ``job_id``), the call into its partition's active set, ``call_started`` on the call
events channel (the call reappears in lists; gateways that reconnected meanwhile took their
snapshot without it) and an ``error`` event with code ``data_lost`` on the call's live channel (watchers learn that the finals before the
loss are missing from the history; the call goes on). The job itself is re-created by a
script (:data:`_NEW_JOB`) that adds it and makes it pending under our name at once (XCLAIM
FORCE), and moves the group's last-delivered ID past it when nothing older waits, so no other
worker reads it as a new job. At its end the call's meta records ``failure=data_lost``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from shared import keys
from shared.cluster import publish, publish_call_event
from shared.redisconn import as_text
from shared.retry import cmd
from shared.schema import CallMeta, CallStarted, CallStatus, ErrorEvent

if TYPE_CHECKING:
    from services.transcriber.call import CallPipeline

log = logging.getLogger(__name__)

DATA_LOST = "data_lost"
"""``error`` code and meta ``failure`` of a call whose keys Redis lost while it was live."""

_NEW_JOB = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local delivered = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last = nil, nil
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then delivered = last end
end
local id = redis.call('XADD', KEYS[1], '*', 'call_sid', ARGV[3])
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'FORCE', 'JUSTID')
if #newest == 0 or newest[1][1] == delivered then
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], id)
end
return id
"""
"""KEYS: the call's partition job stream ``cs:{p}:jobs``; ARGV: group, consumer, callSid. Returns the new job's ID, pending under
the consumer. The group's last-delivered ID moves to it only when every older job was
delivered already (otherwise those would be skipped): in that rare case another worker may
read ours later as new, which moves the entry to it, and our lease loop then sees the call
taken and stops serving it (one owner either way)."""


async def audit(
    redis: aioredis.Redis, owned: dict[str, CallPipeline], pending: set[str]
) -> tuple[list[CallPipeline], list[CallPipeline]]:
    """Sort our unfinished calls: ``(taken, vanished)``.

    Args:
        owned: our calls that have not ended, by job ID.
        pending: the job IDs pending under our consumer name (XPENDING).

    Returns:
        ``taken``: their job is pending under another worker. ``vanished``: their job entry or
        their meta hash is gone from Redis.

    Raises:
        RedisError, OSError: Redis failed (the lease loop retries).
    """
    calls = list(owned.items())
    async with redis.pipeline(transaction=False) as pipe:
        for jid, call in calls:  # one HEXISTS per call and lease; an XRANGE only when in doubt
            pipe.hexists(keys.meta(call.sid), "call_sid")
            if jid not in pending:
                pipe.xrange(call.store.jobs, jid, jid, count=1)
        replies: list[Any] = list(await cmd(pipe.execute()))
    taken: list[CallPipeline] = []
    vanished: list[CallPipeline] = []
    for jid, call in calls:
        has_meta = replies.pop(0)
        job_exists = True if jid in pending else bool(replies.pop(0))
        if call.ended or call.ending:
            continue
        if job_exists and jid not in pending:
            taken.append(call)
        elif not (has_meta and job_exists) and call.ready:
            vanished.append(call)  # (before ready, the call's own start-up reads its meta)
    return taken, vanished


async def restore(redis: aioredis.Redis, call: CallPipeline, consumer: str) -> None:
    """Write back what Redis lost of ``call`` (see the module docstring) and adopt its new job.

    Raises:
        RedisError, OSError: Redis failed; nothing is adopted (the next lease round retries;
        what was written is rewritten then, each write being idempotent or harmless twice).
    """
    job_id, jobs = call.job_id, call.store.jobs
    if not await cmd(redis.xrange(jobs, job_id, job_id, count=1)):
        new_id = await cmd(redis.eval(_NEW_JOB, 1, jobs, keys.JOBS_GROUP, consumer, call.sid))
        job_id = as_text(new_id)
    meta = (call.meta or CallMeta(call_sid=call.sid)).model_copy(update={"status": CallStatus.LIVE})
    fields = {**meta.to_redis(), **call.checkpoint.to_meta(), "job_id": job_id}
    error = ErrorEvent(
        code=DATA_LOST,
        message="Redis lost this call's data while it was live; the call goes on, but finals "
        "before the loss are missing from its history",
        call_sid=call.sid,
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.meta(call.sid), mapping=fields)  # type: ignore[arg-type]
        pipe.sadd(keys.active(keys.tag_of(call.sid)), call.sid)
        publish_call_event(pipe, call.sid, CallStarted(call=meta).to_json())
        publish(pipe, keys.live(call.sid), error.to_json())
        await cmd(pipe.execute())
    call.job_id = job_id
    call.failure = DATA_LOST
    log.error(
        "call restored after Redis lost its keys",
        extra={"call_sid": call.sid, "job": job_id, "resume_audio_id": fields["resume_audio_id"]},
    )
