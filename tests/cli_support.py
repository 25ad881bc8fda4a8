"""What every command-line mistake must look like to the user who made it."""

from __future__ import annotations

import subprocess


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, no traceback, and one error line that says each of `words`."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    for word in words:
        assert word in errors[0]
