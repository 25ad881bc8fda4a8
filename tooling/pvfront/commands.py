"""The user-facing operations, shared by the `pvfront` CLI and the invoke tasks.

Each takes plain values, prints what a user wants to see, and returns an exit code; a user
mistake raises a PvfrontError, which both shells turn into one line and that code.
"""

from __future__ import annotations

import subprocess
import sys

from pvfront import hosttools, provision
from pvfront.build import BuildOptions, BuildResult, build_modules
from pvfront.errors import EXIT_FAILED, EXIT_OK, EXIT_SETUP
from pvfront.targets import Target, load_targets
from pvfront.workspace import Workspace


def _say(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def select(ws: Workspace, target_id: str | None, all_targets: bool) -> list[Target]:
    return load_targets(ws.targets_file).select(target_id, all_targets=all_targets)


def setup(install: bool = True) -> int:
    installed = hosttools.ensure_host_tools(install=install)
    _say(f"installed: {' '.join(installed)}" if installed else "host tools: all present")
    return EXIT_OK


def targets_fetch(ws: Workspace, target_id: str | None, all_targets: bool) -> int:
    targets = select(ws, target_id, all_targets)
    report = provision.fetch(ws, targets, log=_warn)
    for tree in report.trees:
        _say(f"{tree.target.id}: {tree.release} in {tree.root}")
    for target_id_, error in report.errors.items():
        _warn(f"pvfront: error: {error}" if error.startswith(target_id_) else
              f"pvfront: error: {target_id_}: {error}")
    return EXIT_SETUP if report.errors else EXIT_OK


def targets_list(ws: Workspace) -> int:
    rows = provision.status(ws, list(load_targets(ws.targets_file).targets))
    header = ("TARGET", "SUITE", "ARCH", "FLAVOUR", "CACHED", "NEWEST", "PACKAGES")
    table = [header]
    for row in rows:
        cached = row.cached.release if row.cached else "-"
        newest = row.available.release if row.available else (row.note or "-")
        versions = row.cached.packages if row.cached else (
            row.available.versions if row.available else {})
        kernel_version = next((v for n, v in versions.items() if n.startswith("linux-image-")), "-")
        table.append((row.target.id, row.target.suite, row.target.arch, row.target.flavour,
                      cached, newest, kernel_version))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        _say("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def build(ws: Workspace, target_id: str | None = None, all_targets: bool = False,
          sparse: bool = True) -> list[BuildResult]:
    """Build kmod/ for the selected targets, fetching any target not yet in the cache."""
    hosttools.ensure_host_tools()
    trees = provision.ensure(ws, select(ws, target_id, all_targets), log=_warn)
    return build_modules(trees, ws.kmod_dir, ws.build_dir, ws.log_dir,
                         BuildOptions(sparse=sparse), on_result=lambda r: _say(r.summary()))


def build_exit_code(results: list[BuildResult]) -> int:
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


def pytest(ws: Workspace, argv: list[str]) -> int:
    """Run the test suites in a child pytest so its exit code (0/1/2/3) is ours."""
    proc = subprocess.run([sys.executable, "-m", "pytest", *argv], cwd=ws.root)
    return proc.returncode
