"""Provisioning a target from an archive that misbehaves: a mirror that cannot be reached, a
newest kernel that is listed but not served, a headers package without its Makefile; and two
processes provisioning one target into one cache, one of them killed halfway.

The archive is a fake (an AptView whose indexes answer from memory and whose downloads are
small .deb files built here with dpkg-deb), so nothing reaches a network or the host's apt.
The suite, the host names, the ABIs and the versions are made up for the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pvfront
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
    stop_in_download: Path | None = None  # the first download stops there (see _stop_at)

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
        if self.archive.stop_in_download:
            _stop_at(self.archive.stop_in_download, "download")
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


def _archive() -> Archive:
    """An archive with the busybox every target needs, and no kernel yet."""
    archive = Archive()
    archive.add("busybox-static", "1.0-1", **{"bin/busybox": ""})
    return archive


@pytest.fixture
def archive() -> Archive:
    return _archive()


def _fetch(ws: Workspace, archive: Archive, log: list[str]) -> provision.FetchReport:
    view = FakeView(Mirror("http://deb.example/debian", None), ws.cache / "apt", archive)
    return provision.fetch(ws, [TARGET], log=log.append, view=view)


def _unfinished(ws: Workspace) -> list[Path]:
    """What an extraction leaves in the target's directory besides the tree and its record."""
    tdir = provision.target_dir(ws, TARGET)
    return sorted(p for p in tdir.iterdir() if p.name not in ("root", "target.json"))


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
    assert _unfinished(ws) == []


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


def test_every_package_says_what_it_downloads_and_how_big_it_is(ws, archive):
    archive.add_kernel(NEWER)
    log: list[str] = []
    report = _fetch(ws, archive, log)
    [tree] = report.trees
    downloads = [line for line in log if "downloading" in line]
    assert len(downloads) == len(tree.packages) == len(archive.downloads)
    for key, version in tree.packages.items():
        name, _, arch = key.partition(":")
        said = f"{TARGET.id}: downloading {name}:{arch or TARGET.arch} {version} ("
        assert any(line.startswith(said) for line in downloads), (said, downloads)


def _without_headers_makefile(archive: Archive, release: str) -> str:
    """Take the Makefile out of a release's headers package; the path it had in the tree."""
    rel = f"usr/src/linux-headers-{release}/Makefile"
    del archive.files[(f"linux-headers-{release}", NEWER.replace("-", ".") + "-1")][rel]
    return rel


def test_a_headers_package_without_a_makefile_names_where_it_looked_and_leaves_nothing(ws, archive):
    release = archive.add_kernel(NEWER)
    missing = _without_headers_makefile(archive, release)
    report = _fetch(ws, archive, [])
    assert report.trees == []
    error = str(report.errors[TARGET.id])
    looked_at, _, reason = error.partition(": ")
    assert looked_at.startswith(f"{provision.target_dir(ws, TARGET)}/")
    assert looked_at.endswith(f"/{missing}") and "\n" not in error
    assert f"linux-headers-{release}" in reason
    assert provision.load_tree(ws, TARGET) is None
    assert _unfinished(ws) == []


def test_a_new_kernel_that_fails_to_extract_leaves_the_cached_one_as_it_was(ws, archive):
    older = archive.add_kernel(OLDER)
    _fetch(ws, archive, [])
    before = sorted(p.relative_to(ws.cache) for p in provision.target_dir(ws, TARGET).rglob("*"))
    _without_headers_makefile(archive, archive.add_kernel(NEWER))
    report = _fetch(ws, archive, [])
    assert [t.release for t in report.trees] == [older]
    after = sorted(p.relative_to(ws.cache) for p in provision.target_dir(ws, TARGET).rglob("*"))
    assert after == before


# --- two processes, one cache ----------------------------------------------------------------

_TESTS = Path(__file__).resolve().parent
_TOOLING = Path(pvfront.__file__).resolve().parents[1]
_PATIENCE = 120.0  # seconds a process may take to reach a point: only ends a broken test


def _stop_at(root: Path, point: str) -> None:
    """Say (by a file) that this process has reached `point`, then wait for root/go."""
    (root / f"at-{point}").touch()
    deadline = time.monotonic() + _PATIENCE
    while not (root / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody created {root / 'go'}")
        time.sleep(0.05)


def fetch_in_this_process(root: Path, stop_in: str) -> None:
    """What each test process runs: fetch TARGET from a fake archive into root/cache, logging
    to stderr as the CLI does; print the tree it ends up with and what it downloaded as JSON.

    stop_in "download" or "extract": stop there, holding the target's lock, until root/go.
    """
    archive = _archive()
    archive.add_kernel(NEWER)
    if stop_in == "download":
        archive.stop_in_download = root
    elif stop_in == "extract":
        extract = provision._extract

        def extract_and_stop(debs: list[Path], dest: Path) -> None:
            extract(debs, dest)
            _stop_at(root, "extract")

        provision._extract = extract_and_stop
    ws = Workspace(root=root, cache=root / "cache")
    view = FakeView(Mirror("http://deb.example/debian", None), ws.cache / "apt", archive)
    [tree] = provision.fetch(ws, [TARGET], view=view).trees
    print(json.dumps({"root": str(tree.root), "downloads": archive.downloads}))


def _start(root: Path, name: str, stop_in: str = "") -> subprocess.Popen:
    """A process running fetch_in_this_process; its stderr goes to root/<name>.err."""
    with (root / f"{name}.err").open("w") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, pathlib, test_provision as t; "
                "t.fetch_in_this_process(pathlib.Path(sys.argv[1]), sys.argv[2])",
                str(root),
                stop_in,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (_TESTS, _TOOLING)))},
        )


def _stderr(root: Path, name: str) -> list[str]:
    return (root / f"{name}.err").read_text().splitlines()


def _await(proc: subprocess.Popen, reached: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _PATIENCE
    while not reached():
        assert proc.poll() is None, f"the process ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {_PATIENCE} s"
        time.sleep(0.05)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=_PATIENCE)
    assert proc.returncode == 0, proc.returncode
    return json.loads(out)


def _waiting(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("waiting for ")]


def test_a_second_process_waits_for_the_first_says_for_whom_and_takes_its_tree(tmp_path):
    first = _start(tmp_path, "first", stop_in="download")
    second = None
    try:
        _await(first, (tmp_path / "at-download").exists, "the first download")
        second = _start(tmp_path, "second")
        _await(second, lambda: bool(_waiting(_stderr(tmp_path, "second"))), "waiting line")
        (tmp_path / "go").touch()
        by_first, by_second = _result(first), _result(second)
    finally:
        for proc in (first, second):
            if proc:
                proc.kill()
    assert _waiting(_stderr(tmp_path, "second")) == [
        f"waiting for target {TARGET.id} (held by pid {first.pid})"
    ]
    assert _waiting(_stderr(tmp_path, "first")) == []
    assert by_first["downloads"] and by_second["downloads"] == []
    assert by_second["root"] == by_first["root"]
    ws = Workspace(root=tmp_path, cache=tmp_path / "cache")
    tree = provision.load_tree(ws, TARGET)
    assert tree is not None and str(tree.root) == by_first["root"] and not tree.problems()
    assert _unfinished(ws) == []


def test_a_process_killed_while_extracting_holds_no_lock_and_its_leftovers_are_removed(
    tmp_path,
):
    ws = Workspace(root=tmp_path, cache=tmp_path / "cache")
    killed = _start(tmp_path, "killed", stop_in="extract")
    try:
        _await(killed, (tmp_path / "at-extract").exists, "the extraction")
    finally:
        killed.kill()
    killed.wait()
    assert _unfinished(ws), "the killed process had a tree half in place"
    assert provision.load_tree(ws, TARGET) is None
    (tmp_path / "go").touch()  # nobody must stop any more
    next_run = _result(_start(tmp_path, "next"))
    assert _waiting(_stderr(tmp_path, "next")) == []
    tree = provision.load_tree(ws, TARGET)
    assert tree is not None and str(tree.root) == next_run["root"] and not tree.problems()
    assert _unfinished(ws) == []
