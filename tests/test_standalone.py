"""The repository needs nothing outside it: no path beyond its root, and the test data inside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests import recordings
from tests.recordings import ROOT

OUTSIDE = re.compile(rb"\.\./shared|/work/shared|shared/audio(?!\.py)|DESIGN\.md")
"""Paths to things beside the repository (a sibling ``shared`` folder, its recordings, its
design file) that a clone of the repository alone does not have. ``shared/audio.py`` is ours."""

_SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
              ".hypothesis", "build", "dist"}  # fmt: skip


def repo_files() -> list[Path]:
    """The files git tracks; without git (an unpacked archive), every file but build output."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        return [ROOT / name.decode() for name in out.split(b"\0") if name]
    except (OSError, subprocess.CalledProcessError):
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file()
            and not _SKIP_DIRS & set(p.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]


def outside_references(files: list[Path], root: Path = ROOT) -> list[str]:
    """``path:line: match`` (path relative to ``root``) for every mention of a path outside it."""
    found = []
    for path in files:
        if path.resolve() == Path(__file__).resolve() or not path.is_file():
            continue
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            for match in OUTSIDE.finditer(line):
                found.append(f"{path.relative_to(root)}:{n}: {match.group().decode()}")
    return found


def test_no_file_points_outside_the_repository() -> None:
    """No tracked file (code, tests, docs, Dockerfile, compose) names ../shared or its recordings."""
    files = repo_files()
    assert ROOT / "README.md" in files and ROOT / "tests" / "data" / "README.md" in files
    assert outside_references(files) == []


def test_the_check_finds_an_outside_path(tmp_path: Path) -> None:
    """A file naming ../shared/audio or DESIGN.md is reported; one naming shared/audio.py is not."""
    doc = tmp_path / "notes.md"
    doc.write_text("see shared/audio.py\nread ../shared/DESIGN.md\n/work/shared/audio/x.wav\n")
    assert outside_references([doc], tmp_path) == [
        "notes.md:2: ../shared",
        "notes.md:2: DESIGN.md",
        "notes.md:3: /work/shared",
    ]


def test_fixtures_find_every_recording_inside_the_repository(audio_dir: Path) -> None:
    """The audio_dir fixture and every recording's WAV and references resolve inside the repo."""
    root = ROOT.resolve()
    assert audio_dir.resolve().is_relative_to(root)
    for name in recordings.NAMES:
        for path in (
            recordings.wav(name),
            audio_dir / f"{name}.json",
            audio_dir / f"{name}.txt",
        ):
            assert path.is_file(), path
            assert path.resolve().is_relative_to(root), path
        assert recordings.reference(name)["turns"]
