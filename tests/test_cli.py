"""The CLI contract shared by every command: help, version, lazy imports, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

from tests.conftest import run_ptool

HEAVY = ("torch", "torchvision", "tensorboard", "matplotlib")


def _imported_modules(*args: str) -> set[str]:
    code = (
        "import sys, json\n"
        f"sys.argv = ['ptool', *{list(args)!r}]\n"
        "from ptool.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], ["convcalc", "--h", "32", "--k", "3", "--s", "2"]])
def test_fast_paths_never_import_heavy_modules(args):
    modules = _imported_modules(*args)
    assert "typer" in modules  # the probe really ran the CLI
    assert not [m for m in HEAVY if m in modules]


def test_version_reads_torch_version_from_metadata():
    proc = run_ptool("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("ptool ")
    assert f"torch {metadata.version('torch')}" in proc.stdout


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "ptool", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ptool ")


def test_help_lists_subcommands():
    proc = run_ptool("--help")
    assert proc.returncode == 0
    assert "convcalc" in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = run_ptool("no-such-command")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_long_error_stays_one_line_in_a_pipe():
    missing = "/no/such/" + "long-directory-name/" * 6 + "ckpt.pt"
    proc = run_ptool("inspect-checkpoint", missing)
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error:") and missing in first
