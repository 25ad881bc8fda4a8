"""User mistakes and an unreachable mirror end in one line and exit 2, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

from cli_support import assert_one_line_error, run_pvfront
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
TARGETS = load_targets(Workspace.discover().targets_file)


def run(argv, **env):
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_an_unknown_target_is_one_line_and_exit_2():
    proc = run_pvfront("build", "--target", "deb99-sparc")
    assert_one_line_error(proc, "unknown target 'deb99-sparc'", "targets.toml")


def test_invoke_reports_an_unknown_target_the_same_way():
    proc = run([sys.executable, "-m", "invoke", "build", "--target", "deb99-sparc"])
    assert_one_line_error(proc, "unknown target 'deb99-sparc'")


def test_an_unreachable_mirror_is_one_line_per_target_and_exit_2(tmp_path):
    target_id = TARGETS.default_id
    proc = run(
        [sys.executable, "-m", "pvfront", "targets", "fetch", "--target", target_id],
        PVFRONT_MIRROR="http://127.0.0.1:9/debian",
        PVFRONT_CACHE=str(tmp_path),
    )
    assert_one_line_error(proc, target_id, "127.0.0.1:9")


def test_targets_list_shows_every_target_cached_or_not(tmp_path):
    proc = run_pvfront("targets", "list", PVFRONT_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["TARGET", "SUITE", "ARCH", "FLAVOUR"]
    rows = [line.split() for line in lines[1:]]
    assert [row[:4] for row in rows] == [
        [t.id, t.suite, t.arch, t.flavour] for t in TARGETS.targets
    ]
