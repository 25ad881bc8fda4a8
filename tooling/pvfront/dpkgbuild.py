"""dpkg-buildpackage in the build root of a target's suite, as that suite builds its packages.

Both of pvfront's Debian builds go through here: the source package that gives pvfront-dkms
and, per target, the binary-only build of pvfront-modules-<release> from its gated stage.
Each runs with that suite's dpkg-dev and debhelper, dated SOURCE_DATE_EPOCH, so two builds of
the same tree give the same bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pvfront import buildroot
from pvfront.errors import FailedError
from pvfront.targets import Target
from pvfront.workspace import Workspace

# What dpkg-buildpackage needs in a build root besides the base: build-essential, which it
# always checks for, and Build-Depends, by names every supported suite resolves (bullseye's
# dkms itself provides dh-sequence-dkms). One set for both builds, so the root is extended
# once.
BUILD_DEPENDS = ("build-essential", "debhelper", "dh-sequence-dkms")
# The newest Debian policy that every supported suite's lintian knows: a newer one is
# "newer-standards-version" (a warning) to bullseye's, an older one only informational
# "out-of-date-standards-version" to later lintians.
STANDARDS_VERSION = "4.5.1"


def write_tree(tree: Path, files: dict[str, bytes], executable: set[str]) -> Path:
    """The source tree `tree` made anew from its files (relative path -> content), every mode
    set whatever the umask, as dpkg-source keeps them in the tarball."""
    shutil.rmtree(tree, ignore_errors=True)
    for name, data in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if name in executable else 0o644)
    for directory in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    return tree


def run(ws: Workspace, target: Target, source_tree: Path, build: str, epoch: int) -> None:
    """`dpkg-buildpackage --build=<build>` in source_tree, inside the target suite's build
    root; its products land in source_tree's parent, a failure names the log it left there."""
    root = buildroot.ensure_packages(ws, target, BUILD_DEPENDS)
    work = source_tree.parent
    argv = [
        "env",
        f"SOURCE_DATE_EPOCH={epoch}",
        "LC_ALL=C.UTF-8",
        "sh",
        "-c",
        f'cd "$1" && exec dpkg-buildpackage --no-sign --build={build}',
        "sh",
        str(source_tree),
    ]
    with root.in_use(buildroot.stderr_log):
        proc = subprocess.run(root.command(argv, [work]), capture_output=True, text=True)
    if proc.returncode != 0:
        log = work / "dpkg-buildpackage.log"
        log.write_text(proc.stdout + proc.stderr)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FailedError(f"{source_tree}: dpkg-buildpackage failed: {last} (log: {log})")
