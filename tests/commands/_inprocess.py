"""`ptool ARGS` inside the test process: the real entry point (`ptool.cli.main`), without the
seconds a subprocess spends importing torch. Exit codes and one-line errors as in a shell."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_main(*args: str, cwd, monkeypatch, capsys, stdin: str = "") -> subprocess.CompletedProcess:
    import io

    from ptool.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["ptool", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("PTOOL_DEBUG", raising=False)
    monkeypatch.delenv("PTOOL_TRUST_CODE", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    code = exited.value.code
    return subprocess.CompletedProcess(args, code if isinstance(code, int) else 0, out, err)
