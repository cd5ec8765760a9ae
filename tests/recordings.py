"""Where the test recordings live: ``tests/data/`` in this repository (see its README.md).

Each recording ``<name>`` has ``<name>.txt`` (the reference transcript) and ``<name>.json``
(channel names and every turn's speaker, start, end and text) in ``tests/data/``. Its WAV is
there too, except ``call_dentist.wav``: the tests use the copy the package ships for
``callscribe demo`` (``callscribe/data/call_dentist.wav``) rather than a second one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root directory."""

DATA_DIR = ROOT / "tests" / "data"
"""The recordings' references and WAVs."""

PACKAGE_DATA_DIR = ROOT / "callscribe" / "data"
"""The recording bundled in the package for the demo (``call_dentist.wav``)."""

NAMES = ("call_dentist", "call_order_status", "librivox_sense_and_sensibility")
"""Every recording the tests and benchmarks use."""


def wav(name: str) -> Path:
    """Path of the recording ``<name>.wav``: in ``tests/data`` or, for the demo's call, the package.

    Raises:
        FileNotFoundError: neither directory has it.
    """
    for directory in (DATA_DIR, PACKAGE_DATA_DIR):
        path = directory / f"{name}.wav"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name}.wav is in neither {DATA_DIR} nor {PACKAGE_DATA_DIR}")


def reference(name: str) -> dict[str, Any]:
    """The ``<name>.json`` of a recording: ``channels``, ``duration`` and ``turns``."""
    return json.loads((DATA_DIR / f"{name}.json").read_text())
