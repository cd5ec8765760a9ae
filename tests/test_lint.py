"""The code checks CONVENTIONS.md asks CI to run: ruff everywhere, mypy strict on the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(300)
def test_ruff_finds_nothing() -> None:
    """`ruff check .` passes (async, bugbear, import and style rules of pyproject.toml)."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_on_the_package() -> None:
    """`mypy --strict shared services callscribe` passes (settings in pyproject.toml)."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "shared", "services", "callscribe"],
        cwd=ROOT, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
