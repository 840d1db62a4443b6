"""The README is the first thing a user reads: it must stay true (sqlite-utils' test_docs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from aggregator.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block, "README has no sh code block"
    lines = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert lines[:2] == ["pip install -e . && aggregator daemon --serve",
                         "pip install -e '.[test]' && pytest"]


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_has_help_and_is_in_the_readme(name: str) -> None:
    command = main.commands[name]
    assert command.help and command.help.strip(), f"{name} has no help text"
    assert f"aggregator {name}" in README, f"README does not mention `aggregator {name}`"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{name} {param.opts} has no help text"


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "aggregator", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for name in main.commands:
        assert name in out.stdout


def test_systemd_unit_is_shipped_and_runs_the_daemon() -> None:
    unit = (ROOT / "contrib" / "aggregator.service").read_text(encoding="utf-8")
    assert re.search(r"^ExecStart=.*aggregator .*daemon --serve", unit, re.M)
    assert "contrib/aggregator.service" in README


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed")
def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "aggregator", "tests", "bench"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
