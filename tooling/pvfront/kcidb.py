"""Results as KernelCI's KCIDB report (schema v4): one checkout, builds, tests.

The checkout is pvfront's source (its git commit), a build is pvfront's modules built for one
target's kernel release, and a test is one test run on one target. Statuses come from
pvfront's exit classes (`errors.EXIT_*`), following KCIDB's definitions: FAIL when the code
under test was judged faulty, ERROR when the test could not finish (a guest kernel crashed
or hung: the tested code's state is unknown, its console log says more), MISS when the
harness or the set-up broke before anything was tested.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pvfront.errors import EXIT_FAILED, EXIT_KERNEL, EXIT_OK, EXIT_SETUP, UsageError
from pvfront.targets import Target
from pvfront.workspace import Workspace

ORIGIN = "pvfront"
SCHEMA_VERSION = {"major": 4, "minor": 5}
EXCERPT_LIMIT = 16384  # the schema's maxLength of log_excerpt

# KCIDB's statuses by pvfront's exit classes; a skipped test is SKIP.
STATUS_BY_EXIT = {
    EXIT_OK: "PASS",
    EXIT_FAILED: "FAIL",
    EXIT_KERNEL: "ERROR",
    EXIT_SETUP: "MISS",
}
# KCIDB's priority order: a test whose phases end differently reports the first of these.
_PRIORITY = ("FAIL", "ERROR", "MISS", "PASS", "DONE", "SKIP")


def worst(statuses: Iterable[str]) -> str:
    """The status KCIDB's priority order puts first."""
    return min(statuses, key=_PRIORITY.index)


def utc_timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def run_id(seconds: float) -> str:
    """The name of a run that started then, unique among pvfront's runs: part of test ids."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M%S.%fZ")


@dataclass(frozen=True)
class Checkout:
    id: str
    git_commit_hash: str | None
    modified: bool = False  # the work tree differs from the commit

    @classmethod
    def of(cls, ws: Workspace) -> Checkout:
        """pvfront's git commit; outside a git checkout, a digest of the module sources."""
        try:
            commit, changes = (
                subprocess.run(
                    ["git", "-C", str(ws.root), *argv],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                for argv in (["rev-parse", "HEAD"], ["status", "--porcelain", "-uno"])
            )
        except (OSError, subprocess.CalledProcessError):
            digest = hashlib.sha256()
            for source in sorted((ws.root / "kmod").rglob("*")):
                if source.is_file():
                    digest.update(source.name.encode() + source.read_bytes())
            return cls(f"{ORIGIN}:kmod-{digest.hexdigest()[:16]}", None)
        if changes:
            return cls(f"{ORIGIN}:{commit}-modified", commit, modified=True)
        return cls(f"{ORIGIN}:{commit}", commit)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "origin": ORIGIN, "tree_name": ORIGIN}
        if self.git_commit_hash:
            record["git_commit_hash"] = self.git_commit_hash
        if self.modified:
            record["comment"] = "the work tree had changes not yet committed"
        return record


@dataclass(frozen=True)
class Build:
    """pvfront's modules built for one kernel: a target's release, or any kernel symcheck
    was given."""

    checkout: Checkout
    name: str  # the target's id, or the kernel's label
    release: str | None  # None when the tests never got as far as a kernel tree
    architecture: str | None = None  # the kernel's name for it (Kbuild's ARCH)
    config_name: str | None = None  # the target's flavour

    @classmethod
    def for_target(cls, checkout: Checkout, target: Target, release: str | None) -> Build:
        arch = target.architecture.kbuild_arch
        return cls(checkout, target.id, release, arch, target.flavour)

    @property
    def id(self) -> str:
        return f"{self.checkout.id}:{self.name}:{self.release or 'unprovisioned'}"

    def to_json(self) -> dict[str, Any]:
        kernel = f" for Linux {self.release}" if self.release else ""
        record: dict[str, Any] = {
            "id": self.id,
            "checkout_id": self.checkout.id,
            "origin": ORIGIN,
            "comment": f"pvfront modules{kernel} ({self.name})",
            "valid": True,  # a build that failed leaves no modules to test
        }
        if self.architecture:
            record["architecture"] = self.architecture
        if self.config_name:
            record["config_name"] = self.config_name
        return record


@dataclass
class TestRun:
    """One test on one target; its status is the worst of its phases'."""

    __test__ = False  # not a pytest test class, whatever its name

    run_id: str
    name: str  # the runner's unique name for it (a pytest node id)
    path: str  # KCIDB's dot-separated classification, e.g. pvfront.pvf_blk.reads
    build: Build
    start: float
    statuses: list[str] = field(default_factory=list)
    duration: float = 0.0
    log_path: Path | None = None
    log_excerpt: str = ""

    @property
    def status(self) -> str:
        return worst(self.statuses) if self.statuses else "MISS"

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": f"{ORIGIN}:{self.run_id}:{self.name}",
            "build_id": self.build.id,
            "origin": ORIGIN,
            "path": self.path,
            "status": self.status,
            "start_time": utc_timestamp(self.start),
            "duration": round(self.duration, 3),
        }
        if self.log_path is not None:
            record["log_url"] = self.log_path.resolve().as_uri()
        if self.log_excerpt:
            record["log_excerpt"] = self.log_excerpt[-EXCERPT_LIMIT:]
        return record


@dataclass
class Report:
    checkout: Checkout
    tests: list[TestRun] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        builds = {t.build.id: t.build for t in self.tests}
        return {
            "version": dict(SCHEMA_VERSION),
            "checkouts": [self.checkout.to_json()],
            "builds": [b.to_json() for b in builds.values()],
            "tests": [t.to_json() for t in self.tests],
        }

    def write(self, path: Path) -> Path:
        """The report as JSON at path (its directory made if needed)."""
        if not path.name or path.is_dir():
            raise UsageError(f"{path}: a directory; --kcidb takes the name of a file to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def kcidb_path(module: str, function: str) -> str:
    """KCIDB's path for a test function of a test module: pvfront.<module>.<function>, each
    without its `test_` prefix and any character the schema forbids."""
    parts = [ORIGIN, module.removeprefix("test_"), function.removeprefix("test_")]
    return ".".join("".join(c if c.isalnum() or c in "_-" else "_" for c in p) for p in parts)
