"""A flat apt repository over the packages in a directory: `Packages`, `Packages.gz` and
`Release` beside the .deb files, so that a machine with the line

    deb [trusted=yes] URL ./

(or, signed, `deb [signed-by=KEYRING] URL ./`) installs them with apt, dependencies and
upgrades included. Source packages beside them are indexed in `Sources`, for `deb-src` lines
and `apt-get source`. The index is made from the files alone and carries no clock but the given
epoch: the same packages give the same bytes.

Signed with an OpenPGP key from the user's GnuPG keyring, the repository gains `InRelease`
and `Release.gpg` (what apt verifies) and the key's public half as a binary keyring for
`signed-by`. The signatures are dated like `Release` (or at the key's creation, if that is
later), so with a deterministic key type (Ed25519, RSA) they too are the same bytes each time.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pvfront.errors import UsageError

ORIGIN = "pvfront"
KEYRING = "pvfront-archive-keyring.gpg"  # beside the index: what a machine puts in signed-by


@dataclass(frozen=True)
class Repository:
    directory: Path
    packages: tuple[Path, ...]  # the .deb files it offers, by name
    release: Path
    keyring: Path | None = None  # the signing key's public half, once signed
    sources: tuple[Path, ...] = ()  # the source packages' .dsc files, for deb-src

    def sources_line(
        self, url: str, keyring_on_machine: str | None = None, kind: str = "deb"
    ) -> str:
        """The sources.list line (`kind` deb or deb-src) for this repository served at url;
        signed, with the path where the machine keeps KEYRING."""
        if self.keyring is None:
            return f"{kind} [trusted=yes] {url.rstrip('/')}/ ./"
        where = keyring_on_machine or f"/etc/apt/keyrings/{KEYRING}"
        return f"{kind} [signed-by={where}] {url.rstrip('/')}/ ./"


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


def _dsc_fields(dsc: Path) -> list[tuple[str, str]]:
    """The fields of a .dsc in their order, each value with its continuation lines; a
    signed .dsc is read through its signature's armour."""
    text = dsc.read_text()
    if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        text = text.split("\n\n", 1)[1].split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    fields: list[tuple[str, str]] = []
    for line in text.strip("\n").splitlines():
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{line}")
        elif ":" in line:
            name, _, value = line.partition(":")
            fields.append((name, value.strip()))
        else:
            raise UsageError(f"{dsc}: not a source package control file (line {line!r})")
    return fields


def _source_stanza(dsc: Path) -> str:
    """The Sources stanza of a source package: its .dsc's fields with Source renamed
    Package, each list of files extended by the .dsc itself, and where they are."""
    data = dsc.read_bytes()
    own = {
        "Files": hashlib.md5(data).hexdigest(),
        "Checksums-Sha1": hashlib.sha1(data).hexdigest(),
        "Checksums-Sha256": hashlib.sha256(data).hexdigest(),
    }
    fields = dict(_dsc_fields(dsc))
    if "Source" not in fields or "Files" not in fields:
        raise UsageError(f"{dsc}: a source package's control file has Source and Files fields")
    lines = [f"Package: {fields.pop('Source')}"]
    for name, value in fields.items():
        if name in own:
            value += f"\n {own[name]} {len(data)} {dsc.name}"
        lines.append(f"{name}: {value}")
    lines.append("Directory: .")
    return "\n".join(lines) + "\n"


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
    """Index every .deb in directory (sorted by file name) as a flat repository there, and
    every source package's .dsc (for deb-src and `apt-get source`)."""
    debs = sorted(directory.glob("*.deb"))
    if not debs:
        raise UsageError(f"{directory}: no .deb files to make a repository of")
    dscs = sorted(directory.glob("*.dsc"))
    stanzas = [_stanza(deb) for deb in debs]
    files: dict[str, bytes] = {}
    for index, text in (
        ("Packages", "\n".join(stanzas)),
        ("Sources", "\n".join(map(_source_stanza, dscs))),
    ):
        if text:
            files[index] = text.encode()
            files[f"{index}.gz"] = gzip.compress(text.encode(), compresslevel=9, mtime=epoch)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    release = directory / "Release"
    release.write_text(_release(files, _architectures(stanzas), epoch))
    # An earlier index's signature, or its source index when there is no source package now.
    for stale in ("InRelease", "Release.gpg", KEYRING, *({"Sources", "Sources.gz"} - set(files))):
        (directory / stale).unlink(missing_ok=True)
    return Repository(directory, tuple(debs), release, sources=tuple(dscs))


def _gpg(argv: list[str], key: str, what: str, gnupghome: Path | None) -> bytes:
    env = dict(os.environ, **({"GNUPGHOME": str(gnupghome)} if gnupghome else {}))
    proc = subprocess.run(["gpg", "--batch", *argv], capture_output=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise UsageError(f"repository key {key}: gpg cannot {what}: {lines[-1]}")
    return proc.stdout


def _key_created(key: str, gnupghome: Path | None) -> int:
    """When the key that signs for `key` was made (gpg's colon listing, field 6 of `pub`)."""
    listing = _gpg(["--with-colons", "--list-keys", key], key, "find it", gnupghome).decode()
    pubs = [line.split(":") for line in listing.splitlines() if line.startswith("pub:")]
    if len(pubs) != 1:
        raise UsageError(f"repository key {key}: names {len(pubs)} keys in the keyring, not one")
    return int(pubs[0][5])


def sign(repository: Repository, key: str, epoch: int, gnupghome: Path | None = None) -> Repository:
    """Sign the repository's Release with `key` (anything gpg's --local-user takes) and
    publish the key's public half beside it."""
    when = max(epoch, _key_created(key, gnupghome))
    signing = ["--local-user", key, "--faked-system-time", f"{when}!", "--digest-algo", "SHA512"]
    release = repository.release
    inrelease = _gpg(
        [*signing, "--clearsign", "--output", "-", str(release)], key, "sign", gnupghome
    )
    detached = _gpg(
        [*signing, "--armor", "--detach-sign", "--output", "-", str(release)],
        key,
        "sign",
        gnupghome,
    )
    public = _gpg(["--export", key], key, "export it", gnupghome)
    directory = repository.directory
    (directory / "InRelease").write_bytes(inrelease)
    (directory / "Release.gpg").write_bytes(detached)
    (directory / KEYRING).write_bytes(public)
    return dataclasses.replace(repository, keyring=directory / KEYRING)
