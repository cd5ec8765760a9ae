"""``callscribe demo`` in a subprocess: the bundled call transcribed end to end, and Ctrl-C."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import re
import signal
import sys
import wave
from pathlib import Path

import pytest

from callscribe import demo

CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))
DEMO_TIMEOUT_S = 150.0
LINE_TIMEOUT_S = 90.0
SIGINT_EXIT_S = 20.0
IN_PROCESS_S = 30.0


def _env() -> dict[str, str]:
    """The caller's environment without REDIS_URL, so the demo uses memory://."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ASR_ENGINE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        CALLSCRIBE, "demo", "--ingest-port", "0", "--gateway-port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip


def _said(lines: list[str], speaker: str) -> str:
    """Everything ``speaker`` said in the demo's output, lower case."""
    return " ".join(
        m.group(1).lower()
        for line in lines
        if (m := re.match(rf"\[\d\d:\d\d\] {speaker}: (.*)", line))
    )


async def test_demo_transcribes_the_bundled_call_and_exits_0() -> None:
    """The demo prints how to watch, each party's words on its own speaker, then exits 0 by itself."""
    proc = await _start("--speed", "4")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEMO_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, out.decode() + err.decode()[-3000:]
    assert "level=warning" not in err.decode(), err.decode()  # nothing breaks into the transcript
    assert any(
        re.fullmatch(
            r"watch from another terminal: callscribe watch --gateway ws://127\.0\.0\.1:\d+", x
        )
        for x in lines
    )
    assert any(re.match(r"first transcript \d+\.\d s after the call started", x) for x in lines)
    caller, callee = _said(lines, "caller"), _said(lines, "callee")
    # key words of call_dentist.txt, each on the side that said it
    for word in ("karen", "cleaning", "david miller", "thank you"):
        assert word in caller, lines
    for word in ("good morning", "karen speaking", "thursday", "early"):
        assert word in callee, lines
    assert "david miller" not in callee and "karen speaking" not in caller
    assert re.fullmatch(
        r"call CA[0-9a-f]{32} ended · \d\d:\d\d elapsed · ([5-9]|1\d) finals", lines[-1]
    )
    assert b"Traceback" not in err


async def test_demo_stops_cleanly_on_sigint() -> None:
    """SIGINT after the first transcript line stops the demo promptly (0 or 130), no traceback."""
    proc = await _start("--speed", "1")
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(LINE_TIMEOUT_S):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before its first transcript"
                if re.match(r"\[\d\d:\d\d\] (caller|callee): ", line):
                    break
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), SIGINT_EXIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode in (0, 130), err.decode()[-3000:]
    assert b"Traceback" not in err
    assert b"Traceback" not in out


# ----------------------------------------------------------------- in process, engine faked


class _FakeEngine:
    """Stands in for the Whisper engine: the demo only preloads and closes it."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True


async def _waits_for_stop(settings: object, *, stop: asyncio.Event, **_: object) -> None:
    """A service ``run`` that does nothing until ``stop``."""
    await stop.wait()


def _short_wav(path: Path, seconds: float = 0.5) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0\0\0" * int(8000 * seconds))
    return path


def _never_retrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # asyncio reports an unretrieved exception when its future is collected
    return [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_ctrl_c_while_the_model_loads_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Stop set while the model loads: no service starts, the engine is closed, status 130."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    stop, engine = asyncio.Event(), _FakeEngine()

    async def loading(settings: object) -> _FakeEngine:
        stop.set()  # Ctrl-C arrives during the load
        return engine

    out = io.StringIO()
    options = demo.DemoOptions(ingest_port=0, gateway_port=0)
    status = await asyncio.wait_for(
        demo.run_demo(options, stop, out, load_engine=loading), IN_PROCESS_S
    )
    assert status == 130
    assert engine.closed
    assert "ingest" not in out.getvalue() and "loaded" not in out.getvalue()


async def test_ctrl_c_before_the_ports_are_bound_is_quiet(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop set while ingest starts (its port not yet bound): 130 and no asyncio error logged."""
    from services.ingest import app as ingest_app
    from services.transcriber import app as transcriber_app

    monkeypatch.setenv("REDIS_URL", redis_url)

    async def ingest_interrupted(settings: object, *, stop: asyncio.Event, **_: object) -> None:
        stop.set()
        await stop.wait()

    async def loaded(settings: object) -> _FakeEngine:
        return _FakeEngine()

    monkeypatch.setattr(ingest_app, "run", ingest_interrupted)
    monkeypatch.setattr(transcriber_app, "run", _waits_for_stop)
    options = demo.DemoOptions(ingest_port=0, gateway_port=0)
    status = await asyncio.wait_for(
        demo.run_demo(options, asyncio.Event(), io.StringIO(), load_engine=loaded), IN_PROCESS_S
    )
    assert status == 130
    assert _never_retrieved(caplog) == []


async def test_a_call_that_never_ends_fails_the_demo_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    """No transcriber ends the streamed call: the demo says so and exits 1 instead of hanging."""
    from services.transcriber import app as transcriber_app

    monkeypatch.setenv("REDIS_URL", redis_url)

    async def loaded(settings: object) -> _FakeEngine:
        return _FakeEngine()

    monkeypatch.setattr(transcriber_app, "run", _waits_for_stop)
    out = io.StringIO()
    options = demo.DemoOptions(
        ingest_port=0,
        gateway_port=0,
        speed=0,
        audio=str(_short_wav(tmp_path / "short.wav")),
        end_grace_s=1.0,
        end_per_audio_s=0.0,
    )
    status = await asyncio.wait_for(
        demo.run_demo(options, asyncio.Event(), out, load_engine=loaded), IN_PROCESS_S
    )
    assert status == 1, out.getvalue()
    assert "the call did not end within 1 s" in out.getvalue()


async def test_a_dead_redis_fails_the_demo_at_once_naming_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """REDIS_URL names a port nobody listens on: exit 1 with one line naming Redis (password
    masked), before the model loads or a service starts; the gateway is not blamed."""
    from tests.redis_server import free_port

    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    loaded: list[object] = []

    async def loading(settings: object) -> _FakeEngine:
        loaded.append(settings)
        return _FakeEngine()

    out = io.StringIO()
    options = demo.DemoOptions(ingest_port=0, gateway_port=0)
    status = await asyncio.wait_for(
        demo.run_demo(options, asyncio.Event(), out, load_engine=loading), IN_PROCESS_S
    )
    err = capsys.readouterr().err
    assert status == 1
    assert loaded == [] and "ingest" not in out.getvalue()
    [line] = err.strip().splitlines()
    assert line.startswith("callscribe demo: Redis at redis://:***@127.0.0.1:")
    assert "does not answer" in line and "gateway" not in line and "hunter2" not in line
