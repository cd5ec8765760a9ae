"""``callscribe demo``: the whole system in one process, transcribing a bundled recording.

Ingest, transcriber and gateway run as their ``run()`` coroutines under one TaskGroup with one
``stop`` event, on ``REDIS_URL`` (``memory://``, an in-process fakeredis, unless the
environment sets a real one) with the embedded Whisper engine. The bundled two-party call
(``callscribe/data/call_dentist.wav``, see ``data/README.md``) is streamed through ingest's real
``/twilio`` WebSocket as a two-track Twilio call at real-time pace (``speed`` to change), and
watched through the gateway's real ``/v1/ws`` exactly like ``callscribe watch``. The demo
returns 0 once the call has ended and its last final is shown (``serve`` keeps the services up
for more calls until ``stop``), 130 when ``stop`` was set from outside (Ctrl-C).

The call itself (wait for the ports, watch, stream, await the end) is
:class:`callscribe.demo_call.DemoCall`'s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from callscribe.demo_call import DemoCall, cancel_quietly, first
from callscribe.simulate import load_tracks

log = logging.getLogger(__name__)

DEFAULT_INGEST_PORT = 5000
DEFAULT_GATEWAY_PORT = 8080
SHUTDOWN_GRACE_S = 15.0
"""How long the services may take to stop once ``stop`` is set before they are cancelled."""
REDIS_CHECK_S = 5.0
"""How long the demo waits for a ``REDIS_URL`` Redis to answer its first PING before it gives up, s."""


@dataclass
class DemoOptions:
    """``speed``: pace multiplier (1.0 = real time). ``serve``: keep serving after the call.
    ``ingest_port``/``gateway_port``: None = 5000/8080 when free, else a free port; 0 = any.
    ``audio``: a WAV path to stream instead of the bundled recording. ``end_grace_s``,
    ``end_per_audio_s``: see :class:`callscribe.demo_call.DemoCall`."""

    speed: float = 1.0
    serve: bool = False
    ingest_port: int | None = None
    gateway_port: int | None = None
    audio: str | None = None
    end_grace_s: float = 60.0
    end_per_audio_s: float = 2.0


def bundled_recording() -> Path:
    """Path of the recording shipped in the package (``callscribe/data/call_dentist.wav``).

    Found beside this module rather than with ``importlib.resources``, which refuses a package
    that an editable install registered as a namespace.
    """
    return Path(__file__).resolve().parent / "data" / "call_dentist.wav"


def port_or_free(preferred: int | None, default: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when given; else ``default`` if it can be bound on ``host`` now, else 0."""
    if preferred is not None:
        return preferred
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, default))
        except OSError:
            return 0
    return default


async def preload_engine(settings: Any) -> Any:
    """Build the embedded Whisper engine and load its models now, before the call starts.

    The engine is handed to the transcriber's ``run(engine=…)``; the demo closes it at the end.

    Raises:
        AsrError: the model cannot be loaded (the ``whisper`` extra is not installed).
    """
    from services.transcriber.whisper import WhisperEngine

    engine = WhisperEngine(settings)
    await engine.models()
    return engine


class Demo:
    """One demo run; :meth:`run` returns the exit status (0, 1 on failure, 130 when stopped)."""

    def __init__(
        self,
        options: DemoOptions,
        stop: asyncio.Event,
        out: TextIO,
        load_engine: Callable[[Any], Awaitable[Any]] = preload_engine,
    ) -> None:
        self.options = options
        self.stop = stop
        self.out = out
        self.load_engine = load_engine
        self.status = 0

    def say(self, text: str) -> None:
        """One line of the demo's own narration on ``out``."""
        print(text, file=self.out, flush=True)

    async def run(self) -> int:
        """Start the services, stream and watch the call, stop (unless ``serve``)."""
        from shared.settings import (
            AsrEngineName,
            GatewaySettings,
            IngestSettings,
            TranscriberSettings,
        )
        from shared.startup import redact_url, redis_unreachable

        audio = Path(self.options.audio) if self.options.audio else bundled_recording()
        tracks = load_tracks([audio])
        # Explicitly insecure: the demo's calls come from this process, not Twilio, and its
        # services listen on 127.0.0.1 only. Their start-up warnings about it are not printed,
        # as they would only break into the live transcript; the first line says it instead.
        ingest = IngestSettings(
            host="127.0.0.1",
            port=port_or_free(self.options.ingest_port, DEFAULT_INGEST_PORT),
            twilio_insecure=True,
        )
        gateway = GatewaySettings(
            host="127.0.0.1",
            port=port_or_free(self.options.gateway_port, DEFAULT_GATEWAY_PORT),
            gateway_auth="none",
        )
        for name in ("services.ingest.admission", "services.ingest.twiml", "services.gateway.auth"):
            logging.getLogger(name).setLevel(logging.ERROR)
        transcriber = TranscriberSettings(asr_engine=AsrEngineName.WHISPER)
        redis_url = redact_url(ingest.redis_url)
        self.say(
            f"callscribe demo: Redis {redis_url}, embedded Whisper engine, "
            "no authentication (local only)"
        )
        reason = await redis_unreachable(ingest.redis_url, REDIS_CHECK_S)
        if reason is not None:  # fail now, naming Redis, rather than time out on the gateway
            print(
                f"callscribe demo: Redis at {redis_url} does not answer ({reason}); start it, "
                "or unset REDIS_URL to run on an in-process memory://",
                file=sys.stderr,
            )
            return 1
        t0 = time.monotonic()
        engine = await self.load_engine(transcriber)
        if self.stop.is_set():  # Ctrl-C while the model loaded: start nothing
            await engine.aclose()
            return 130
        self.say(f"speech model loaded in {time.monotonic() - t0:.1f} s")
        loop = asyncio.get_running_loop()
        ingest_bound: asyncio.Future[int] = loop.create_future()
        gateway_bound: asyncio.Future[int] = loop.create_future()
        services = asyncio.create_task(
            self._services(
                (ingest, transcriber, gateway), engine, tracks, audio, ingest_bound, gateway_bound
            ),
            name="demo-services",
        )
        try:
            await first(services, self.stop.wait())
            if not services.done():
                try:
                    async with asyncio.timeout(SHUTDOWN_GRACE_S):
                        await asyncio.shield(services)
                except TimeoutError:
                    log.warning(
                        "shutdown: services did not stop in time",
                        extra={"grace_s": SHUTDOWN_GRACE_S},
                    )
                    await cancel_quietly(services)
            if not services.cancelled():
                services.result()
        finally:
            await cancel_quietly(services)
            await engine.aclose()
        return self.status

    async def _services(
        self,
        settings: tuple[Any, Any, Any],
        engine: Any,
        tracks: list[bytes],
        audio: Path,
        ingest_bound: asyncio.Future[int],
        gateway_bound: asyncio.Future[int],
    ) -> None:
        """The three services and the demo driver under one TaskGroup, one ``stop``."""
        from services.gateway import app as gateway_app
        from services.ingest import app as ingest_app
        from services.transcriber import app as transcriber_app

        ingest, transcriber, gateway = settings
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                ingest_app.run(ingest, stop=self.stop, bound=ingest_bound), name="ingest"
            )
            tg.create_task(
                transcriber_app.run(transcriber, stop=self.stop, engine=engine), name="transcriber"
            )
            tg.create_task(
                gateway_app.run(gateway, stop=self.stop, bound=gateway_bound), name="gateway"
            )
            tg.create_task(self._drive(tracks, audio, ingest_bound, gateway_bound), name="demo")

    async def _drive(
        self,
        tracks: list[bytes],
        audio: Path,
        ingest_bound: asyncio.Future[int],
        gateway_bound: asyncio.Future[int],
    ) -> None:
        """Wait for the ports, stream and watch the call; then stop unless ``serve``."""
        try:
            call = DemoCall(
                tracks,
                audio,
                self.options.speed,
                self.out,
                self.stop,
                end_grace_s=self.options.end_grace_s,
                end_per_audio_s=self.options.end_per_audio_s,
            )
            self.status = await call.run(ingest_bound, gateway_bound)
            if self.options.serve and not self.stop.is_set():
                self.say("services keep running (--serve); Ctrl-C stops them")
                await self.stop.wait()
        finally:
            if self.stop.is_set() and self.status == 0:
                self.status = 130
            self.stop.set()


async def run_demo(
    options: DemoOptions,
    stop: asyncio.Event,
    out: TextIO = sys.stdout,
    *,
    load_engine: Callable[[Any], Awaitable[Any]] = preload_engine,
) -> int:
    """Run the demo until its call ends (or ``stop``); returns the exit status.

    ``load_engine(transcriber_settings)`` builds the speech engine before any service starts
    (:func:`preload_engine`, the embedded Whisper engine; tests pass a lighter one).

    A service that fails to start (a port taken, Redis unreachable) or a call that does not end
    in time ends the demo with 1, an unreadable ``audio`` with 2, each with a one-line
    explanation rather than a traceback.
    """
    from callscribe.simulate import SimulateError
    from shared.errors import AsrError

    try:
        return await Demo(options, stop, out, load_engine).run()
    except SimulateError as exc:  # --audio cannot be read
        print(f"callscribe demo: {exc}", file=sys.stderr)
        return 2
    except AsrError as exc:
        print(f"callscribe demo: the speech model cannot start: {exc}", file=sys.stderr)
        return 1
    except ExceptionGroup as group:
        first = _leaf(group)
        if not isinstance(first, OSError | TimeoutError | ConnectionError):
            raise
        print(f"callscribe demo: {first.__class__.__name__}: {first}", file=sys.stderr)
        return 1


def _leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first non-group exception inside ``group``."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
