"""Debian's lintian, of the suite a package is for, run on pvfront's packages.

A package is judged by the lintian its suite ships (trixie's lintian knows trixie's policy),
run in a small Debian system of that suite: `<cache>/lintian/<suite>_<arch>/`, made once by
`mmdebstrap` with lintian installed (lintian is `Architecture: all`: the host's architecture
serves every target). A root is made again when its recipe changes, or when the suite's index
(the one provisioning keeps, not refreshed for this) offers a newer lintian than the root has:
a stable suite's point release can bring one, and sid's does often. Making or using a root
takes its lock, exclusively or shared.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvfront import architectures, buildroot, provision
from pvfront.debversion import compare
from pvfront.errors import SetupError
from pvfront.locks import locked
from pvfront.targets import Target
from pvfront.workspace import Workspace

# Changing what a root is made of changes this, and every lintian root is made anew.
RECIPE = "1"
# lintian's letters for what it reports, gravest first; E and W fail a package.
FAILING = ("E", "W")


@dataclass(frozen=True)
class Tag:
    """One line of lintian's report: `E: package: tag-name details`."""

    severity: str  # E, W, I, P, X, O (overridden), N
    package: str
    name: str
    details: str

    @classmethod
    def parse(cls, line: str) -> Tag | None:
        head, sep, rest = line.partition(": ")
        if not sep or len(head) != 1 or not head.isupper():
            return None
        package, sep, tag = rest.partition(": ")
        if not sep:
            return None
        name, _, details = tag.partition(" ")
        return cls(head, package, name, details)

    def __str__(self) -> str:
        return f"{self.severity}: {self.package}: {self.name} {self.details}".rstrip()


@dataclass(frozen=True)
class Report:
    version: str  # lintian's own, e.g. "2.116.3"
    suite: str
    tags: tuple[Tag, ...]

    @property
    def failing(self) -> list[Tag]:
        return [t for t in self.tags if t.severity in FAILING]

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for tag in self.tags:
            result[tag.severity] = result.get(tag.severity, 0) + 1
        return result


@dataclass(frozen=True)
class LintianRoot:
    suite: str
    path: Path
    lock: Path

    def check(self, debs: Sequence[Path]) -> Report:
        """lintian on the packages, with every tag it shows (informational and overridden
        ones included); the packages' directories are bound into the root."""
        binds = sorted({deb.resolve().parent for deb in debs})
        with locked(self.lock, f"lintian root {self.path.name}", buildroot.stderr_log, shared=True):
            version = self.version()
            output = self._run(
                [
                    "lintian",
                    "--no-cfg",
                    "--display-info",
                    "--show-overrides",
                    "--allow-root",
                    *[str(deb.resolve()) for deb in debs],
                ],
                binds=binds,
                ok=(0, 1),  # 1: it reported tags --fail-on fails on; 2 is its own failure
            )
        tags = tuple(t for t in map(Tag.parse, output.splitlines()) if t is not None)
        return Report(version, self.suite, tags)

    def version(self) -> str:
        """lintian's own version in the root, as the archive spells it ("2.116.3"; lintian
        says "Lintian v2.116.3")."""
        return self._run(["lintian", "--version"], binds=[]).split()[-1].removeprefix("v")

    def _run(self, argv: list[str], binds: list[Path], ok: tuple[int, ...] = (0,)) -> str:
        proc = subprocess.run(
            buildroot.chroot_command(self.path, argv, binds),
            capture_output=True,
            text=True,
        )
        if proc.returncode not in ok:
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SetupError(f"lintian root {self.path.name}: {argv[0]} failed: {reason}")
        return proc.stdout


def _recipe_key(suite: str) -> str:
    text = repr((RECIPE, suite, buildroot.sources_lines([suite])))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def outdated(installed: str | None, offered: str | None) -> bool:
    """Whether a root with lintian `installed` should be made again when the archive offers
    `offered`: only for a newer one, and never when either is unknown (no index: offline)."""
    return installed is not None and offered is not None and compare(offered, installed) > 0


def _offered(ws: Workspace, suite: str, arch: str) -> str | None:
    """The newest lintian in the suite's cached index, if there is an index."""
    index = provision.apt_view(ws).index(suite, arch)
    versions = [v.version for v in index.versions("lintian")] if index else []
    return max(versions, key=functools.cmp_to_key(compare)) if versions else None


def ensure(ws: Workspace, target: Target, log: buildroot.Log = buildroot.stderr_log) -> LintianRoot:
    """The lintian root of the target's suite (its base release: bookworm for
    bookworm-backports), made first when it must be."""
    suite = target.base_suite
    name = f"{suite}_{architectures.host().debian_arch}"
    path = ws.cache / "lintian" / name
    lock, record = path.with_suffix(".lock"), path.with_suffix(".json")
    root = LintianRoot(suite, path, lock)

    def recorded() -> dict:
        try:
            found = json.loads(record.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def current() -> bool:
        made = recorded()
        if made.get("recipe") != _recipe_key(suite) or not path.is_dir():
            return False
        offered = _offered(ws, suite, host_arch)
        # a root made before versions were recorded says its own
        installed = made.get("lintian") or root.version()
        if outdated(installed, offered):
            log(f"lintian root {name}: the archive has lintian {offered}, the root {installed}")
            return False
        return True

    host_arch = architectures.host().debian_arch
    if current():
        return root
    with locked(lock, f"lintian root {name}", log):
        if current():
            return root
        spec = buildroot.RootSpec(suite, architectures.host().debian_arch, (suite,), False)
        staging = path.with_name(path.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        log(f"lintian root {name}: making it with mmdebstrap (about a minute)")
        command = buildroot.mmdebstrap_command(suite, spec.arch, [suite], ["lintian"], staging)
        try:
            buildroot.run_step(command, spec, "mmdebstrap", log, subject=f"lintian root {name}")
        except SetupError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.rename(path)
        made = {"recipe": _recipe_key(suite), "lintian": root.version()}
        record.write_text(json.dumps(made, indent=2) + "\n")
    return root
