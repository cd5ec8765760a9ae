"""``callscribe simulate``: play WAV files into ingest as Twilio Media Streams calls.

Any WAV (rate, sample width, channel count, PCM/float/mu-law) becomes 8 kHz mu-law tracks
(:func:`shared.audio.wav_to_ulaw_tracks`): a stereo file is caller (inbound) and callee
(outbound); two mono files likewise, in that order; one mono file is a one-track (inbound)
stream. The call itself, pacing, packet loss and a late outbound track are
:mod:`callscribe.twilio_client`'s job; this module only loads audio, builds the calls, runs them
concurrently and reports. Twilio's message shapes:
https://www.twilio.com/docs/voice/media-streams/websocket-messages.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from shared.audio import SILENCE, WavError, wav_to_ulaw_tracks

log = logging.getLogger(__name__)


class SimulateError(ValueError):
    """Arguments or audio that cannot make a call (message says why, for the user)."""


def load_tracks(paths: list[str | Path]) -> list[bytes]:
    """Read one or two WAV files into one or two mu-law 8 kHz tracks (8 bytes per ms).

    One file: its first two channels (mono → one inbound track). Two files: the first channel of
    each, caller then callee; the shorter is padded with mu-law silence (0xFF) so both legs last
    the whole call.

    Raises:
        SimulateError: no file, more than two, two files of which one is stereo, or a file
            that cannot be read as WAV (missing, not RIFF/WAVE, unsupported encoding).
    """
    if not 1 <= len(paths) <= 2:
        raise SimulateError(f"give one stereo or mono WAV, or two mono WAVs (got {len(paths)})")
    per_file: list[list[bytes]] = []
    for path in paths:
        try:
            per_file.append(wav_to_ulaw_tracks(path))
        except FileNotFoundError:
            raise SimulateError(f"{path}: no such file") from None
        except (WavError, OSError) as exc:
            raise SimulateError(str(exc)) from None
    if len(per_file) == 1:
        tracks = per_file[0]
    else:
        if any(len(t) > 1 for t in per_file):
            raise SimulateError("with two files, each must be mono (caller first, then callee)")
        tracks = [per_file[0][0], per_file[1][0]]
    if any(len(t) == 0 for t in tracks):
        raise SimulateError("the audio is empty")
    longest = max(len(t) for t in tracks)
    return [t + bytes([SILENCE]) * (longest - len(t)) for t in tracks]


def signature_url(public_url: str) -> str:
    """The URL Twilio signs for the stream handshake: ``https://h`` → ``wss://h/twilio``.

    A URL that already has a path is kept (only its scheme becomes ws/wss). See docs/protocol.md
    ("WebSocket /twilio") and https://www.twilio.com/docs/usage/security#validating-requests.
    """
    scheme, sep, rest = public_url.partition("://")
    if not sep:
        scheme, rest = "https", public_url
    scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    host, _, path = rest.partition("/")
    return f"{scheme}://{host}/{path or 'twilio'}"


def webhook_signature_url(public_url: str) -> str:
    """The URL Twilio signs for the voice webhook: ``https://h`` → ``https://h/twiml``."""
    return public_url.rstrip("/") + "/twiml"


def parse_params(items: list[str]) -> dict[str, str]:
    """``["From=+15550100", "To=+15550199"]`` → dict.

    Raises:
        SimulateError: an item without ``=`` or with an empty key.
    """
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SimulateError(f"--param wants KEY=VALUE, got {item!r}")
        params[key] = value
    return params


@dataclass
class SimulateOptions:
    """One ``simulate`` run: ``calls`` concurrent calls of the same audio, distinct SIDs.

    ``speed``: pace multiplier (1.0 = real time, 0 = as fast as possible). ``loss``: fraction of packets dropped
    (0..1). ``outbound_delay_ms``: how late the callee's track starts. ``seed``: base of each
    call's loss pattern (call i uses ``seed + i``); None = random. ``auth_token``: signs the
    handshake (X-Twilio-Signature) against ``signature_url`` (None = the ingest URL itself)
    and, like Twilio, first fetches each call's TwiML from ingest's ``/twiml`` (signed
    against ``webhook_signature_url``) to stream with the one-time token it issues.
    """

    ingest_url: str
    calls: int = 1
    speed: float = 1.0
    loss: float = 0.0
    outbound_delay_ms: int = 0
    seed: int | None = None
    auth_token: str | None = None
    signature_url: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    open_timeout_s: float = 10.0
    webhook_signature_url: str | None = None


def _reason(exc: Exception, options: SimulateOptions) -> str:
    """Why a call failed, for a person: names ingest's URL when it could not be reached."""
    if isinstance(exc, OSError | TimeoutError):
        return f"cannot reach ingest at {options.ingest_url} ({exc.__class__.__name__}: {exc})"
    return f"{exc.__class__.__name__}: {exc}" if not str(exc) else str(exc)


def _fmt_counts(counts: dict[str, Any]) -> str:
    """``stream_call``'s counts for a person: floats to 0.1, internal clock readings left out."""
    return " ".join(
        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in counts.items()
        if not isinstance(v, (dict, list)) and not k.endswith("_monotonic")
    )


async def simulate(tracks: list[bytes], options: SimulateOptions, out: TextIO = sys.stdout) -> int:
    """Stream ``options.calls`` calls of ``tracks`` into ingest at once; print a line per start/end.

    Returns the exit status: 0 when every call streamed to its end, 1 when any failed (the
    others still run to completion). Returns the SIDs via the printed lines only.

    Raises:
        SimulateError: bad options (calls < 1, loss outside [0, 1), speed < 0).
    """
    from callscribe.twilio_client import SimCall, new_sid, stream_call, twiml_url

    if options.calls < 1:
        raise SimulateError("--calls must be at least 1")
    if not 0.0 <= options.loss < 1.0:
        raise SimulateError("--loss is a fraction in [0, 1)")
    if not options.speed >= 0:  # also refuses nan
        raise SimulateError("--speed must not be negative (0 = as fast as possible)")
    if options.outbound_delay_ms < 0:
        raise SimulateError("--outbound-delay-ms must not be negative")
    seconds = len(tracks[0]) / 8000
    account = new_sid("AC")
    failures = 0

    async def one(index: int) -> None:
        nonlocal failures
        seed = secrets.randbelow(1 << 31) if options.seed is None else options.seed + index
        call = SimCall(
            tracks=tracks,
            call_sid=new_sid("CA"),
            stream_sid=new_sid("MZ"),
            account_sid=account,
            custom_parameters=dict(options.params),
            loss=options.loss,
            seed=seed,
            outbound_delay_ms=options.outbound_delay_ms if len(tracks) == 2 else 0,
        )

        def connected() -> None:
            print(
                f"call {index + 1}/{options.calls} {call.call_sid} started: "
                f"{len(tracks)} track(s), {seconds:.1f} s of audio at {options.speed:g}x",
                file=out,
                flush=True,
            )

        try:
            counts = await stream_call(
                options.ingest_url,
                call,
                speed=options.speed,
                auth_token=options.auth_token,
                signature_url=options.signature_url,
                open_timeout_s=options.open_timeout_s,
                webhook_url=twiml_url(options.ingest_url) if options.auth_token else None,
                webhook_signature_url=options.webhook_signature_url,
                on_connected=connected,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed call is reported (once, here); the others go on
            failures += 1
            print(
                f"call {index + 1}/{options.calls} {call.call_sid} failed: {_reason(exc, options)}",
                file=out,
                flush=True,
            )
            return
        print(
            f"call {index + 1}/{options.calls} {call.call_sid} finished: {_fmt_counts(counts)}",
            file=out,
            flush=True,
        )

    async with asyncio.TaskGroup() as tg:
        for i in range(options.calls):
            tg.create_task(one(i), name=f"simulate-call-{i}")
    return 1 if failures else 0
