"""Shared by the command-line tests: a user's mistake is one line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def usage_error(capsys, main, *argv) -> str:
    """Runs `main(argv)` in this process; checks that it exits with status 2 after printing exactly one
    line on stderr and no traceback; returns that line."""
    capsys.readouterr()  # what earlier steps of the test printed
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    return _one_line(capsys.readouterr().err)


def module_usage_error(module: str, *argv, env: dict[str, str] | None = None) -> str:
    """The same through the real entry point, `python -m module argv` in a child process (`env`: added to
    this process's environment)."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 2, proc.stderr[-4000:]
    return _one_line(proc.stderr)


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]
