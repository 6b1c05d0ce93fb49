"""Shared fixtures: run the real `ptool` console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PTOOL = str(Path(sys.executable).with_name("ptool"))


def run_ptool(
    *args: str,
    cwd: str | Path | None = None,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`ptool ARGS...` as a user would run it; stdout and stderr captured as text."""
    blank = {"PTOOL_DEBUG": "", "PTOOL_TRUST_CODE": ""}  # a developer's shell sets neither
    full_env = {**os.environ, **blank, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [PTOOL, *args],
        cwd=cwd,
        input=input,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def ptool():
    return run_ptool
