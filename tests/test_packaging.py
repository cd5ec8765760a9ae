"""Packaging: the wheel ships the demo recording and the console script; every subcommand has help."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from callscribe.demo import bundled_recording
from tests import recordings

ROOT = Path(__file__).resolve().parent.parent
CALLSCRIBE = str(Path(sys.executable).with_name("callscribe"))


def test_bundled_recording_is_the_test_recording_with_its_licence() -> None:
    """The demo's call_dentist.wav is the one the tests score (references in tests/data); its
    README gives source and licence."""
    wav = bundled_recording()
    assert recordings.wav("call_dentist") == wav
    assert recordings.reference("call_dentist")["duration"] > 27
    readme = (wav.parent / "README.md").read_text().lower()
    for needle in ("source", "licence", "flite", "bsd", "made for this project", "tests/data"):
        assert needle in readme


def test_build_ships_data_and_console_script(tmp_path: Path) -> None:
    """setuptools' build (what goes into the wheel) has the recording, its README and the script.

    ``build_py`` + ``egg_info`` are the steps ``bdist_wheel`` runs; they are used directly
    because the test environment has no ``wheel`` package and nothing may be downloaded.
    """
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("shared", "services", "callscribe"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q",
         "egg_info", "--egg-base", str(tmp_path), "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=src, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    lib = tmp_path / "lib"
    assert (lib / "callscribe" / "data" / "call_dentist.wav").is_file()
    assert (lib / "callscribe" / "data" / "README.md").is_file()
    assert (lib / "callscribe" / "cli.py").is_file()
    scripts = (tmp_path / "callscribe.egg-info" / "entry_points.txt").read_text()
    assert "callscribe = callscribe.cli:main" in scripts


@pytest.mark.parametrize(
    "command", ["ingest", "transcriber", "gateway", "simulate", "watch", "demo"]
)
def test_every_subcommand_has_help(command: str) -> None:
    """``callscribe COMMAND --help`` exits 0 and describes --port/--check or the tool's options."""
    done = subprocess.run(
        [CALLSCRIBE, command, "--help"], capture_output=True, timeout=60, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    expected = {"ingest": "--port", "gateway": "--port", "transcriber": "--check",
                "simulate": "--outbound-delay-ms", "watch": "--since", "demo": "--serve"}  # fmt: skip
    assert expected[command] in done.stdout


def test_top_level_help_lists_every_subcommand() -> None:
    """``callscribe --help`` lists the six subcommands."""
    done = subprocess.run([CALLSCRIBE, "--help"], capture_output=True, timeout=60, text=True)
    assert done.returncode == 0
    for command in ("ingest", "transcriber", "gateway", "simulate", "watch", "demo"):
        assert command in done.stdout
