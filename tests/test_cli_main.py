"""The ``callscribe`` entry point: bad arguments and an early Ctrl-C end without a traceback."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

from callscribe import cli, commands
from callscribe.watch_options import v1_url

CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))


def test_ctrl_c_before_the_signal_handlers_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt while a subcommand still imports or loads returns 130, not a traceback."""

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_demo", interrupted)
    try:
        status = cli.main(["demo"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): Python prints a traceback")
    assert status == cli.EXIT_INTERRUPTED


def test_v1_url_accepts_web_addresses_and_refuses_others() -> None:
    """ws/wss URLs get /v1/ws, http(s) (the web page's address) map to ws(s), the rest is refused."""
    assert v1_url("ws://h:8080") == "ws://h:8080/v1/ws"
    assert v1_url("wss://h/") == "wss://h/v1/ws"
    assert v1_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/v1/ws"
    assert v1_url("https://h.example/v1/ws") == "wss://h.example/v1/ws"
    for bad in ("localhost:8080", "ftp://h", "ws://"):
        with pytest.raises(ValueError):
            v1_url(bad)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CALLSCRIBE, *args], capture_output=True, text=True, timeout=60)


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    """A gateway URL without a scheme, an unreadable --audio, a negative or nan speed: exit 2, no traceback."""
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 800)
    cases = [
        ("watch", "--gateway", "localhost:8080"),
        ("demo", "--audio", str(tmp_path / "missing.wav")),
        ("demo", "--audio", str(not_wav)),
        ("demo", "--speed", "-1"),
        ("simulate", str(short), "--speed", "nan", "--ingest", "ws://127.0.0.1:9/twilio"),
    ]
    for args in cases:
        done = _run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, args
        assert done.stderr.startswith(f"callscribe {args[0]}: "), (args, done.stderr)
