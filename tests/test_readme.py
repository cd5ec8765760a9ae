"""The README stays true: its test command is what CI runs, its settings table is the models'."""

from __future__ import annotations

import re
import subprocess

from shared.settings_doc import markdown_table
from tests.conftest import ROOT


def _between(text: str, marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", text, re.S)
    assert match, f"README.md has no {marker} markers"
    return match.group(1)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run extracts the fenced command between the README's markers, and it runs pytest."""
    readme = (ROOT / "README.md").read_text()
    block = _between(readme, "test-command")
    command = [line for line in block.splitlines() if line and not line.startswith("```")]
    assert len(command) == 1 and command[0].endswith("-m pytest"), command
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"cmd=\$\((.*)\)\n", script)
    assert extract, ".ci/run no longer extracts the README command"
    out = subprocess.run(
        ["bash", "-c", extract.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=10
    )
    assert out.stdout.strip() == command[0]
    assert 'eval "$cmd"' in script


def test_configuration_table_matches_the_settings_models() -> None:
    """Every environment variable of every settings model is documented with its default."""
    readme = (ROOT / "README.md").read_text()
    assert _between(readme, "settings").strip() == markdown_table().strip()


def test_quickstart_demo_is_the_command_the_demo_test_runs() -> None:
    """The README's first command installs the whisper extra and runs `callscribe demo`,
    the console script tests/test_demo.py runs end to end."""
    readme = (ROOT / "README.md").read_text()
    block = _between(readme, "demo-command")
    command = [line for line in block.splitlines() if line and not line.startswith("```")]
    assert len(command) == 1
    install, _, run = command[0].rpartition(" && ")
    assert run == ".venv/bin/callscribe demo"
    assert "pip install" in install and ".[whisper]" in install
    test_command = _between(readme, "test-command")
    assert install.replace(".[whisper]", ".[whisper,test]") in test_command
    assert (
        'Path(sys.executable).with_name("callscribe")' in (ROOT / "tests/test_demo.py").read_text()
    )
