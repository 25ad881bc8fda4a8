"""A private apt view of Debian's archive: one index per (suite, architecture).

The mirror is never written down here: it is read from the system's own apt configuration
(`apt-get indextargets`) at run time. Each (suite, architecture) pair gets its own apt state
directory because apt drops a whole suite when any one of its indexes is inconsistent (a mirror
caught mid-sync): kept apart, a broken i386 index cannot take the amd64 kernels down with it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvfront.debversion import compare
from pvfront.errors import SetupError
from pvfront.locks import locked

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
RETRIES = 3
RETRY_DELAY_SECONDS = 3.0


@dataclass(frozen=True)
class Mirror:
    """The Debian archive and security archive the system's apt uses."""

    archive: str
    security: str | None

    def site_for(self, suite: str) -> str | None:
        return self.security if suite.endswith("-security") else self.archive


def _os_codename() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return match.group(1) if match else None


def system_mirror() -> Mirror:
    """Find the Debian mirror in the system's apt configuration.

    PVFRONT_MIRROR and PVFRONT_SECURITY_MIRROR override it (for a local mirror or a proxy).
    """
    override = os.environ.get("PVFRONT_MIRROR")
    if override:
        return Mirror(override.rstrip("/"), os.environ.get("PVFRONT_SECURITY_MIRROR"))
    try:
        out = subprocess.run(
            ["apt-get", "indextargets", "--format", "$(SITE)|$(RELEASE)|$(ORIGIN)|$(COMPONENT)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SetupError(f"cannot read the system's apt configuration: {exc}") from None
    codename = _os_codename()
    archive = security = None
    rows = [[*line.split("|"), "", "", ""][:4] for line in set(out.splitlines())]
    # Debian's own indexes first: a repository of another origin that names the host's release
    # (a local mirror, but also a vendor's `<codename> main`) only when Debian's are absent.
    for site, release, origin, component in sorted(rows, key=lambda r: (r[2] != "Debian", r)):
        if component != "main" or not (origin == "Debian" or release.startswith(codename or "\0")):
            continue
        if release.endswith("-security"):
            security = security or site
        elif "-" not in release:
            archive = archive or site
    if archive is None:
        raise SetupError(
            "no Debian archive in /etc/apt/sources.list{,.d}: add one, or set PVFRONT_MIRROR"
        )
    return Mirror(archive.rstrip("/"), security.rstrip("/") if security else None)


@dataclass(frozen=True)
class PackageVersion:
    """One version of one binary package in one index."""

    name: str
    version: str
    arch: str
    fields: dict[str, str]

    @property
    def filename(self) -> str:
        return Path(self.fields["Filename"]).name

    @property
    def size(self) -> int | None:
        """The .deb's size in bytes, as the index gives it."""
        size = self.fields.get("Size", "")
        return int(size) if size.isdigit() else None

    def depends(self) -> list[str]:
        """Names of the packages this one depends on (alternatives flattened)."""
        names = []
        for clause in self.fields.get("Depends", "").split(","):
            for alternative in clause.split("|"):
                name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
                if name:
                    names.append(name)
        return names


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 paragraphs (as `apt-cache show` prints them)."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _failure_lines(output: str) -> list[str]:
    """apt's reasons for a failed download, most telling first: each `Err:` item with the
    indented cause apt prints under it (with a signed-by keyring the closing `E:` line only
    says the Release file is missing), then the `E:`/`W:` lines that say something failed."""
    lines = output.splitlines()
    causes = []
    for index, line in enumerate(lines):
        if line.startswith("Err:") and index + 1 < len(lines) and lines[index + 1][:1].isspace():
            item = line.split(None, 1)[1] if " " in line else line
            causes.append(f"{item}: {lines[index + 1].strip()}")
    failed = [
        line
        for line in lines
        if line.startswith(("E:", "W:"))
        and ("Failed" in line or "failed" in line)
        and "Some index files" not in line
    ]
    return causes + failed


@dataclass(frozen=True)
class AptIndex:
    """apt state for one suite and one architecture, kept under the pvfront cache."""

    site: str
    suite: str
    arch: str
    state_dir: Path

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.arch}"

    def _options(self) -> list[str]:
        d = self.state_dir
        return [
            "-o",
            f"Dir::Etc::SourceList={d / 'sources.list'}",
            "-o",
            "Dir::Etc::SourceParts=-",
            "-o",
            f"Dir::State::Lists={d / 'lists'}",
            "-o",
            f"Dir::Cache={d / 'cache'}",
            "-o",
            "Dir::State::Status=/dev/null",
            "-o",
            f"APT::Architectures={self.arch}",
            "-o",
            f"APT::Architecture={self.arch}",
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Dir::Cache::pkgcache=pkgcache.bin",  # the system's config may turn it off
            "-o",
            "Dir::Cache::srcpkgcache=srcpkgcache.bin",
            "-o",
            "Acquire::Retries=0",  # update() retries, with a pause
            "-o",
            "APT::Sandbox::User=root",
        ]

    def _prepare(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        line = f"deb [arch={self.arch} signed-by={KEYRING}] {self.site} {self.suite} main\n"
        (self.state_dir / "sources.list").write_text(line)

    @property
    def has_index(self) -> bool:
        pattern = f"*_dists_{self.suite}_main_binary-{self.arch}_Packages*"
        return any((self.state_dir / "lists").glob(pattern))

    def _locked(
        self, shared: bool, log: Callable[[str], None] = lambda _: None
    ) -> contextlib.AbstractContextManager[None]:
        """apt runs here without its own locks: an update holds the index alone; queries and
        downloads, from other processes or threads, share it (a reader waits silently)."""
        path = self.state_dir.with_suffix(".lock")
        return locked(path, f"apt index {self.label}", log, shared=shared)

    def update(self, log: Callable[[str], None]) -> str | None:
        """Refresh the index, retrying a transient mirror error; return the error, if any."""
        with self._locked(shared=False, log=log):
            return self._update(log)

    def _update(self, log: Callable[[str], None]) -> str | None:
        self._prepare()
        error = None
        for attempt in range(1, RETRIES + 1):
            proc = subprocess.run(
                ["apt-get", *self._options(), "update"],
                capture_output=True,
                text=True,
            )
            failures = _failure_lines(proc.stdout + proc.stderr)
            if proc.returncode == 0 and not failures and self.has_index:
                return None
            error = (failures or [f"apt-get update exited {proc.returncode}"])[0]
            error = re.sub(r"^[EW]:\s*", "", error)
            if attempt < RETRIES:
                log(f"{self.label}: {error} (retry {attempt}/{RETRIES - 1})")
                time.sleep(RETRY_DELAY_SECONDS * attempt)
        return error

    def versions(self, name: str) -> list[PackageVersion]:
        if not self.has_index:
            return []
        with self._locked(shared=True):
            proc = subprocess.run(
                ["apt-cache", *self._options(), "show", f"{name}:{self.arch}"],
                capture_output=True,
                text=True,
            )
        if proc.returncode != 0:
            return []
        return [
            PackageVersion(name, s["Version"], self.arch, s)
            for s in parse_stanzas(proc.stdout)
            if s.get("Package") == name and "Version" in s
        ]

    def names(self, prefix: str) -> list[str]:
        if not self.has_index:
            return []
        with self._locked(shared=True):
            proc = subprocess.run(
                ["apt-cache", *self._options(), "pkgnames", prefix],
                capture_output=True,
                text=True,
            )
        return sorted(proc.stdout.split())

    def download(self, package: PackageVersion, dest_dir: Path, quiet: bool) -> Path:
        """Fetch a .deb into dest_dir (kept there as a cache) and check its SHA-256."""
        dest = cached_deb(package, dest_dir)
        if dest is not None:
            return dest
        dest = dest_dir / package.filename
        dest_dir.mkdir(parents=True, exist_ok=True)
        error = ""
        for attempt in range(1, RETRIES + 1):
            with (
                tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as tmp,
                self._locked(shared=True),
            ):
                proc = subprocess.run(
                    [
                        "apt-get",
                        *self._options(),
                        "download",
                        f"{package.name}:{package.arch}={package.version}",
                    ],
                    cwd=tmp,
                    text=True,
                    stdout=subprocess.PIPE if quiet else None,
                    stderr=subprocess.PIPE,
                )
                got = list(Path(tmp).glob("*.deb"))
                if proc.returncode == 0 and len(got) == 1:
                    if _sha256(got[0]) != package.fields.get("SHA256"):
                        error = f"{package.filename}: SHA-256 does not match the index"
                    else:
                        shutil.move(got[0], dest)
                        return dest
                else:
                    lines = _failure_lines(proc.stderr) or proc.stderr.strip().splitlines()
                    error = re.sub(r"^[EW]:\s*", "", lines[0] if lines else "download failed")
            if attempt < RETRIES:
                time.sleep(RETRY_DELAY_SECONDS * attempt)
        raise SetupError(f"{self.label}: cannot download {package.name} {package.version}: {error}")


def cached_deb(package: PackageVersion, dest_dir: Path) -> Path | None:
    """The package's .deb in dest_dir when an earlier download left it there intact."""
    dest = dest_dir / package.filename
    return dest if dest.exists() and _sha256(dest) == package.fields.get("SHA256") else None


def download_line(package: PackageVersion, cached: bool) -> str:
    """What a download of package says it does."""
    what = f"{package.name}:{package.arch} {package.version}"
    return f"{what}: in the cache" if cached else f"downloading {what} ({size_text(package.size)})"


def size_text(size: int | None) -> str:
    """A size in bytes as a person reads it: in the largest binary unit it reaches, to a
    tenth."""
    if size is None:
        return "size unknown"
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if round(value, 1) < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


Found = tuple[AptIndex, PackageVersion]


@dataclass(frozen=True)
class AptView:
    """All the (suite, arch) indexes pvfront uses, under one cache directory."""

    mirror: Mirror
    state_root: Path

    def index(self, suite: str, arch: str) -> AptIndex | None:
        site = self.mirror.site_for(suite)
        if site is None:
            return None
        return AptIndex(site, suite, arch, self.state_root / f"{suite}_{arch}")

    def all_versions(self, name: str, suites: tuple[str, ...], arch: str) -> list[Found]:
        """Every version of a package across suites, newest first, with its index."""
        found: list[Found] = []
        for suite in suites:
            index = self.index(suite, arch)
            if index:
                found.extend((index, v) for v in index.versions(name))
        key = functools.cmp_to_key(compare)
        return sorted(found, key=lambda pair: key(pair[1].version), reverse=True)

    def newest(self, name: str, suites: tuple[str, ...], arch: str) -> Found | None:
        found = self.all_versions(name, suites, arch)
        return found[0] if found else None

    def exact(self, name: str, version: str, suites: tuple[str, ...], arch: str) -> Found | None:
        for suite in suites:
            index = self.index(suite, arch)
            if index:
                for candidate in index.versions(name):
                    if candidate.version == version:
                        return index, candidate
        return None
