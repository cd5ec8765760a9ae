"""``callscribe demo`` in a subprocess: the bundled call transcribed end to end, and Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))
DEMO_TIMEOUT_S = 150.0
LINE_TIMEOUT_S = 90.0
SIGINT_EXIT_S = 20.0


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
