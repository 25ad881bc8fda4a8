"""The flat apt repository `pvfront package` writes beside its packages: apt (the host's own)
reads it, resolves dependencies through it and fetches from it; its index is the same bytes
for the same packages; a directory without packages, or a broken one, is one clear error."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pvfront import aptrepo
from pvfront.aptrepo import KEYRING, sign, write_repository
from pvfront.errors import UsageError

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="no apt-get")

EPOCH = 1_780_000_000


def make_deb(out: Path, name: str, version: str, depends: str | None = None) -> Path:
    root = out / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "usr/share/doc" / name / "README").write_text(f"{name} {version}\n")
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        f"Maintainer: pvfront tests <tests@example.org>\nDescription: {name} for the tests\n"
    )
    if depends:
        control += f"Depends: {depends}\n"
    (root / "DEBIAN/control").write_text(control)
    deb = out / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)
    return deb


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    directory = tmp_path / "repo"
    directory.mkdir()
    make_deb(directory, "pvf-demo-modules", "1.0", depends="pvf-demo-base (>= 1.0)")
    make_deb(directory, "pvf-demo-base", "1.0")
    return directory


def make_source(out: Path, name: str, version: str) -> Path:
    """A native source package's .dsc and its tarball, as dpkg-source writes them."""
    tarball = out / f"{name}_{version}.tar.gz"
    tarball.write_bytes(gzip.compress(f"{name} {version}\n".encode(), mtime=0))
    data = tarball.read_bytes()
    entry = f" {{}} {len(data)} {tarball.name}\n"
    dsc = out / f"{name}_{version}.dsc"
    dsc.write_text(
        f"Format: 3.0 (native)\nSource: {name}\nBinary: {name}-dkms\nArchitecture: all\n"
        f"Version: {version}\nMaintainer: pvfront tests <tests@example.org>\n"
        "Build-Depends: debhelper-compat (= 13),\n dh-sequence-dkms\n"
        f"Checksums-Sha256:\n{entry.format(hashlib.sha256(data).hexdigest())}"
        f"Files:\n{entry.format(hashlib.md5(data).hexdigest())}"
    )
    return dsc


def apt(
    state: Path,
    repo: Path,
    *args: str,
    signed_by: Path | None = None,
    deb_src: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """The host's apt-get with a private state whose one source is the repository (copy:
    like file:, but fetched files land in the cache as from a server), for its source
    packages too with deb_src, trusted without a signature unless a keyring is given for
    signed-by."""
    (state / "lists/partial").mkdir(parents=True, exist_ok=True)
    (state / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    trust = f"signed-by={signed_by}" if signed_by else "trusted=yes"
    kinds = ("deb", "deb-src") if deb_src else ("deb",)
    lines = [f"{kind} [{trust}] copy:{repo} ./\n" for kind in kinds]
    (state / "sources.list").write_text("".join(lines))
    options = {
        "Dir::Etc::SourceList": state / "sources.list",
        "Dir::Etc::SourceParts": "-",
        "Dir::State::Lists": state / "lists",
        "Dir::Cache": state / "cache",
        "Dir::State::Status": state / "status",
        "Debug::NoLocking": "1",
        "APT::Sandbox::User": "root",
    }
    argv = ["apt-get"] + [f"-o{k}={v}" for k, v in options.items()] + list(args)
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd)


def test_apt_resolves_dependencies_through_the_repository_and_fetches_from_it(repo_dir, tmp_path):
    repository = write_repository(repo_dir, EPOCH)
    assert [p.name for p in repository.packages] == [
        "pvf-demo-base_1.0_all.deb",
        "pvf-demo-modules_1.0_all.deb",
    ]
    state = tmp_path / "state"
    updated = apt(state, repo_dir, "update")
    assert updated.returncode == 0 and "W:" not in updated.stderr, updated.stderr
    plan = apt(state, repo_dir, "-s", "install", "pvf-demo-modules")
    assert plan.returncode == 0, plan.stderr
    installs = [line.split()[1] for line in plan.stdout.splitlines() if line.startswith("Inst ")]
    assert installs == ["pvf-demo-base", "pvf-demo-modules"]
    fetched = apt(state, repo_dir, "install", "-y", "--download-only", "pvf-demo-modules")
    assert fetched.returncode == 0, fetched.stderr
    cached = state / "cache/archives/pvf-demo-modules_1.0_all.deb"
    assert cached.read_bytes() == (repo_dir / cached.name).read_bytes()


def test_apt_get_source_fetches_a_source_package_the_repository_indexes(repo_dir, tmp_path):
    dsc = make_source(repo_dir, "pvf-demo", "1.0")
    repository = write_repository(repo_dir, EPOCH)
    assert repository.sources == (dsc,)
    assert "Sources" in repository.release.read_text()
    state, fetched = tmp_path / "state", tmp_path / "fetched"
    fetched.mkdir()
    updated = apt(state, repo_dir, "update", deb_src=True)
    assert updated.returncode == 0 and "W:" not in updated.stderr, updated.stderr
    got = apt(state, repo_dir, "source", "--download-only", "pvf-demo", deb_src=True, cwd=fetched)
    assert got.returncode == 0, got.stderr
    # apt checked both files against the index's hashes and kept them unchanged
    assert sorted(p.name for p in fetched.iterdir()) == [dsc.name, "pvf-demo_1.0.tar.gz"]
    for path in fetched.iterdir():
        assert path.read_bytes() == (repo_dir / path.name).read_bytes()
    # The source package gone, so is its index
    dsc.unlink()
    write_repository(repo_dir, EPOCH)
    assert not (repo_dir / "Sources").exists() and "Sources" not in repository.release.read_text()


def test_the_index_is_the_same_bytes_for_the_same_packages_and_release_hashes_it(repo_dir):
    first = write_repository(repo_dir, EPOCH)
    index = {n: (repo_dir / n).read_bytes() for n in ("Packages", "Packages.gz", "Release")}
    write_repository(repo_dir, EPOCH)
    assert index == {n: (repo_dir / n).read_bytes() for n in index}
    assert gzip.decompress(index["Packages.gz"]) == index["Packages"]
    release = first.release.read_text()
    assert "Date: Thu, 28 May 2026 20:26:40 UTC" in release
    for name in ("Packages", "Packages.gz"):
        digest = hashlib.sha256(index[name]).hexdigest()
        assert f" {digest} {len(index[name])} {name}\n" in release


def test_a_directory_without_packages_or_with_a_broken_one_is_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"repo: no \.deb files to make a repository of"):
        (tmp_path / "repo").mkdir()
        write_repository(tmp_path / "repo", EPOCH)
    (tmp_path / "repo" / "broken_1.0_all.deb").write_bytes(b"not an archive")
    with pytest.raises(UsageError, match=r"broken_1\.0_all\.deb: not a Debian package \("):
        write_repository(tmp_path / "repo", EPOCH)


def signed(directory: Path, key) -> aptrepo.Repository:
    """The repository of directory, written and signed with the test key."""
    return sign(write_repository(directory, EPOCH), key.uid, EPOCH, key.gnupghome)


def test_a_signed_repository_is_verified_by_apt_with_the_published_keyring(
    repo_dir, tmp_path, repository_key
):
    repository = signed(repo_dir, repository_key)
    assert repository.keyring == repo_dir / KEYRING
    assert repository.sources_line("http://h/p") == (
        f"deb [signed-by=/etc/apt/keyrings/{KEYRING}] http://h/p/ ./"
    )
    updated = apt(tmp_path / "a", repo_dir, "update", signed_by=repository.keyring)
    assert updated.returncode == 0 and "W:" not in updated.stderr, updated.stderr
    plan = apt(
        tmp_path / "a", repo_dir, "-s", "install", "pvf-demo-modules", signed_by=repository.keyring
    )
    assert plan.returncode == 0, plan.stderr

    # An index changed after signing is refused, as is a keyring without the signing key.
    (repo_dir / "Release").write_text((repo_dir / "Release").read_text() + "Suite: forged\n")
    (repo_dir / "InRelease").write_bytes(
        (repo_dir / "InRelease").read_bytes().replace(b"Label: pvfront", b"Label: forged")
    )
    refused = apt(tmp_path / "b", repo_dir, "update", signed_by=repository.keyring)
    assert "not signed" in refused.stderr or "BADSIG" in refused.stderr, refused.stderr
    signed(repo_dir, repository_key)
    stranger = tmp_path / "stranger.gpg"
    stranger.write_bytes(b"")
    refused = apt(tmp_path / "c", repo_dir, "update", signed_by=stranger)
    assert "NO_PUBKEY" in refused.stderr or "not signed" in refused.stderr, refused.stderr


def test_signing_twice_gives_the_same_bytes_and_an_unsigned_rewrite_drops_the_signature(
    repo_dir, repository_key
):
    names = ("Release", "InRelease", "Release.gpg", KEYRING)
    signed(repo_dir, repository_key)
    first = {n: (repo_dir / n).read_bytes() for n in names}
    time.sleep(1.1)  # a signature dated by the clock would differ now
    signed(repo_dir, repository_key)
    assert first == {n: (repo_dir / n).read_bytes() for n in names}
    repository = write_repository(repo_dir, EPOCH)
    assert repository.keyring is None
    assert not any((repo_dir / n).exists() for n in names[1:])


def test_a_key_gpg_cannot_sign_with_is_one_line_naming_it(repo_dir, repository_key):
    repository = write_repository(repo_dir, EPOCH)
    with pytest.raises(UsageError, match=r"^repository key nobody@example\.org: gpg cannot "):
        sign(repository, "nobody@example.org", EPOCH, repository_key.gnupghome)
