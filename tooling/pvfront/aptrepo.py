"""A flat apt repository over the packages in a directory: `Packages`, `Packages.gz` and
`Release` beside the .deb files, so that a machine with the line

    deb [trusted=yes] URL ./

(or, once the user has signed `Release`, `deb [signed-by=KEY] URL ./`) installs them with apt,
dependencies and upgrades included. The index is made from the files alone and carries no
clock but the given epoch: the same packages give the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pvfront.errors import UsageError

ORIGIN = "pvfront"


@dataclass(frozen=True)
class Repository:
    directory: Path
    packages: tuple[Path, ...]  # the .deb files it offers, by name
    release: Path

    def sources_line(self, url: str) -> str:
        """The sources.list line for this repository served at url (unsigned)."""
        return f"deb [trusted=yes] {url.rstrip('/')}/ ./"


def _control(deb: Path) -> str:
    proc = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError(f"{deb}: not a Debian package ({proc.stderr.strip().splitlines()[-1]})")
    return proc.stdout.rstrip("\n")


def _stanza(deb: Path) -> str:
    data = deb.read_bytes()
    return (
        f"{_control(deb)}\n"
        f"Filename: ./{deb.name}\n"
        f"Size: {len(data)}\n"
        f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
    )


def _architectures(stanzas: list[str]) -> list[str]:
    found = {"all"}
    for stanza in stanzas:
        for line in stanza.splitlines():
            if line.startswith("Architecture: "):
                found.add(line.split(": ", 1)[1].strip())
    return sorted(found)


def _release(files: dict[str, bytes], architectures: list[str], epoch: int) -> str:
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(epoch))
    lines = [
        f"Origin: {ORIGIN}",
        f"Label: {ORIGIN}",
        f"Date: {date}",
        f"Architectures: {' '.join(architectures)}",
        "MD5Sum:",
        *(f" {hashlib.md5(d).hexdigest()} {len(d)} {n}" for n, d in files.items()),
        "SHA256:",
        *(f" {hashlib.sha256(d).hexdigest()} {len(d)} {n}" for n, d in files.items()),
    ]
    return "\n".join(lines) + "\n"


def write_repository(directory: Path, epoch: int) -> Repository:
    """Index every .deb in directory (sorted by file name) as a flat repository there."""
    debs = sorted(directory.glob("*.deb"))
    if not debs:
        raise UsageError(f"{directory}: no .deb files to make a repository of")
    stanzas = [_stanza(deb) for deb in debs]
    packages = "\n".join(stanzas).encode()
    files = {
        "Packages": packages,
        "Packages.gz": gzip.compress(packages, compresslevel=9, mtime=epoch),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    release = directory / "Release"
    release.write_text(_release(files, _architectures(stanzas), epoch))
    return Repository(directory, tuple(debs), release)
