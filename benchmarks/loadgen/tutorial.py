"""The tutorial baseline's own venv: the libraries of its time, installed once.

The tutorial (``benchmarks/baseline/tutorial_server.py``, 2022) is run with ``websockets``
10.4 (``serve`` handlers take ``(websocket, path)``, ``connect`` takes ``extra_headers``) and
``pydub`` 0.25.1 (which needs the ``audioop`` module: Python ≤ 3.12). :func:`tutorial_python`
creates ``benchmarks/.tutorial-venv`` (git-ignored) with ``python3 -m venv`` and pip on first
use and returns its interpreter.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "benchmarks" / ".tutorial-venv"
PINS = ("websockets==10.4", "pydub==0.25.1")
"""What the tutorial was written against."""


def tutorial_python(venv: Path = VENV, *, timeout_s: float = 600) -> Path:
    """The venv's ``python``, creating the venv first if needed.

    Raises:
        RuntimeError: the venv could not be created or the pins installed.
    """
    python = venv / "bin" / "python"
    stamp = venv / "pins.txt"
    if python.exists() and stamp.exists() and stamp.read_text().split() == list(PINS):
        return python
    shutil.rmtree(venv, ignore_errors=True)
    base = shutil.which("python3") or sys.executable
    print(f"creating the tutorial's venv in {venv} ({', '.join(PINS)})", file=sys.stderr)
    for cmd in (
        [base, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", *PINS],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
    stamp.write_text("\n".join(PINS) + "\n")
    return python
