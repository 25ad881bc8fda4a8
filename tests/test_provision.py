"""Provisioning a target from an archive that misbehaves: a mirror that cannot be reached, a
newest kernel that is listed but not served.

The archive is a fake (an AptView whose indexes answer from memory and whose downloads are
small .deb files built here with dpkg-deb), so nothing reaches a network or the host's apt.
The suite, the host names, the ABIs and the versions are made up for the test.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pvfront import provision
from pvfront.apt import AptView, Mirror, PackageVersion
from pvfront.errors import SetupError
from pvfront.targets import Target
from pvfront.workspace import Workspace

TARGET = Target("fake-amd64", "frobnitz", "amd64", "amd64", "qemu-system-x86_64", "q35")
OLDER, NEWER = "1.0.0-1", "1.0.0-2"  # ABIs: the archive lists NEWER after OLDER
UNREACHABLE = "Failed to fetch http://deb.example/debian/dists/frobnitz/InRelease  503"


@dataclass
class Archive:
    """What the fake mirror lists, what it serves and what it was asked for."""

    packages: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name: (ver, deps)
    files: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    unserved: set[str] = field(default_factory=set)  # listed, but the pool lacks them
    update_error: str | None = None  # every index refresh fails with this
    has_index: bool = True  # an index from an earlier refresh is on disk
    downloads: list[str] = field(default_factory=list)

    def add(self, name: str, version: str, depends: str = "", **files: str) -> None:
        self.packages.setdefault(name, []).append((version, depends))
        self.files[(name, version)] = files

    def add_kernel(self, abi: str) -> str:
        """Every package of one kernel ABI, as Debian lays them out (up to 6.12); its release."""
        release = f"{abi}-{TARGET.flavour}"
        version = abi.replace("-", ".") + "-1"  # its packages' version: a newer ABI, a newer one
        common = f"linux-headers-{abi}-common"
        headers = f"usr/src/linux-headers-{release}"
        self.add(f"linux-headers-{TARGET.flavour}", f"{version}", f"linux-headers-{release}")
        self.add(
            f"linux-headers-{release}",
            version,
            f"{common} (= {version}), linux-kbuild-1.0 (>= {version})",
            **{
                f"{headers}/Makefile": f"include /usr/src/{common}/Makefile\n",
                f"{headers}/Module.symvers": "",
                f"{headers}/.config": "CONFIG_MODVERSIONS=y\n",
                f"{headers}/scripts/mod/modpost": "",
                f"{headers}/scripts/basic/fixdep": "",
            },
        )
        self.add(common, version, **{f"usr/src/{common}/Makefile": "# common\n"})
        self.add("linux-kbuild-1.0", version, **{"usr/lib/linux-kbuild-1.0/README": ""})
        self.add(
            f"linux-image-{release}-unsigned",
            version,
            **{f"boot/vmlinuz-{release}": "", f"lib/modules/{release}/modules.order": ""},
        )
        return release


@dataclass(frozen=True)
class FakeIndex:
    """One (suite, arch) index of the fake archive, with AptIndex's interface."""

    archive: Archive
    suite: str
    arch: str
    site: str = "http://deb.example/debian"

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.arch}"

    @property
    def has_index(self) -> bool:
        return self.archive.has_index

    def update(self, log: Callable[[str], None]) -> str | None:
        return self.archive.update_error

    def versions(self, name: str) -> list[PackageVersion]:
        if self.suite != TARGET.suite:  # the fake has nothing in -security
            return []
        return [
            PackageVersion(name, version, self.arch, {"Depends": deps, "Filename": f"{name}.deb"})
            for version, deps in self.archive.packages.get(name, [])
        ]

    def download(self, package: PackageVersion, dest_dir: Path, quiet: bool) -> Path:
        if package.name in self.archive.unserved:
            raise SetupError(f"{self.label}: cannot download {package.name}: 404  Not Found")
        self.archive.downloads.append(package.name)
        return _deb(dest_dir, package, self.archive.files[(package.name, package.version)])


@dataclass(frozen=True)
class FakeView(AptView):
    archive: Archive = field(default_factory=Archive)

    def index(self, suite: str, arch: str) -> FakeIndex:
        return FakeIndex(self.archive, suite, arch)


def _deb(dest_dir: Path, package: PackageVersion, files: dict[str, str]) -> Path:
    """A real .deb holding these files, which dpkg-deb -x extracts as it would Debian's."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    deb = dest_dir / f"{package.name}_{package.version}_{package.arch}.deb"
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        staging = Path(tmp)
        for rel, text in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        (staging / "DEBIAN").mkdir()
        (staging / "DEBIAN" / "control").write_text(
            f"Package: {package.name}\nVersion: {package.version}\n"
            f"Architecture: {package.arch}\n"
            "Maintainer: Test <test@deb.example>\nDescription: made by the test\n"
        )
        subprocess.run(
            ["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(staging), str(deb)],
            check=True,
            capture_output=True,
        )
    return deb


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(root=tmp_path, cache=tmp_path / "cache")


@pytest.fixture
def archive() -> Archive:
    archive = Archive()
    archive.add("busybox-static", "1.0-1", **{"bin/busybox": ""})
    return archive


def _fetch(ws: Workspace, archive: Archive, log: list[str]) -> provision.FetchReport:
    view = FakeView(Mirror("http://deb.example/debian", None), ws.cache / "apt", archive)
    return provision.fetch(ws, [TARGET], log=log.append, view=view)


def test_the_newest_abi_the_archive_lists_is_installed(ws, archive):
    archive.add_kernel(OLDER)
    newest = archive.add_kernel(NEWER)
    log: list[str] = []
    report = _fetch(ws, archive, log)
    assert not report.errors
    [tree] = report.trees
    assert tree.release == newest and not tree.problems()
    assert provision.load_tree(ws, TARGET) == tree
    # the headers' Makefile points at the common headers extracted beside it
    assert f"include {tree.root}/usr/src/" in (tree.headers_dir / "Makefile").read_text()
    assert log[-1] == f"{TARGET.id}: ready, kernel {newest}"


def test_when_the_newest_abi_is_listed_but_not_served_the_next_one_is_taken_and_said(ws, archive):
    older = archive.add_kernel(OLDER)
    newest = archive.add_kernel(NEWER)
    archive.unserved.add(f"linux-image-{newest}-unsigned")  # a pool mid-sync
    log: list[str] = []
    report = _fetch(ws, archive, log)
    assert not report.errors
    assert [t.release for t in report.trees] == [older]
    assert provision.load_tree(ws, TARGET).release == older
    assert any(line.startswith(f"{TARGET.id}: {newest} unavailable: ") for line in log), log
    assert (
        f"{TARGET.id}: warning: took {older}, not the newest {newest}, which the mirror does "
        "not serve"
    ) in log
    assert not (provision.target_dir(ws, TARGET) / "root.new").exists()


def test_when_no_abi_is_served_the_target_fails_with_the_newest_ones_reason(ws, archive):
    for abi in (OLDER, NEWER):
        archive.unserved.add(f"linux-image-{archive.add_kernel(abi)}-unsigned")
    report = _fetch(ws, archive, [])
    assert report.trees == []
    assert f"linux-image-{NEWER}-{TARGET.flavour}-unsigned" in str(report.errors[TARGET.id])
    assert provision.load_tree(ws, TARGET) is None


def test_a_cached_target_is_kept_when_the_mirror_cannot_be_reached(ws, archive):
    cached_release = archive.add_kernel(OLDER)
    _fetch(ws, archive, [])
    before = sorted(p.relative_to(ws.cache) for p in provision.target_dir(ws, TARGET).rglob("*"))
    archive.add_kernel(NEWER)  # what the archive would offer, could it be reached
    archive.update_error = UNREACHABLE
    archive.downloads.clear()
    log: list[str] = []
    report = _fetch(ws, archive, log)
    assert not report.errors
    assert [t.release for t in report.trees] == [cached_release]
    assert archive.downloads == []
    assert any(
        line.startswith(f"{TARGET.id}: kept cached {cached_release}; index not refreshed: ")
        and UNREACHABLE in line
        for line in log
    ), log
    after = sorted(p.relative_to(ws.cache) for p in provision.target_dir(ws, TARGET).rglob("*"))
    assert after == before


def test_an_up_to_date_cache_is_not_downloaded_again(ws, archive):
    archive.add_kernel(NEWER)
    first = _fetch(ws, archive, []).trees
    archive.downloads.clear()
    assert _fetch(ws, archive, []).trees == first
    assert archive.downloads == []


def test_without_a_cache_an_unreachable_mirror_resolves_from_the_last_index_and_says_so(
    ws, archive
):
    release = archive.add_kernel(NEWER)
    archive.update_error = UNREACHABLE
    log: list[str] = []
    report = _fetch(ws, archive, log)
    assert [t.release for t in report.trees] == [release]
    assert any("warning: resolved without a fresh index" in line for line in log), log


def test_without_a_cache_or_an_index_an_unreachable_mirror_is_the_targets_error(ws, archive):
    archive.add_kernel(NEWER)
    archive.update_error = UNREACHABLE
    archive.has_index = False
    report = _fetch(ws, archive, [])
    assert report.trees == []
    error = str(report.errors[TARGET.id])
    assert error.startswith(f"{TARGET.id}: ") and UNREACHABLE in error
