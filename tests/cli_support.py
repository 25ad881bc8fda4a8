"""What every command-line mistake must look like to the user who made it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pvfront(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m pvfront ARGS` from the repository, as a user types it, with env added."""
    return subprocess.run(
        [sys.executable, "-m", "pvfront", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, and one error line that says each of `words`."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0]
