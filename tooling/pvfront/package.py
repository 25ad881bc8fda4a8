"""Release packages: a staged module tree per target, a Debian binary package, a DKMS source.

Packaging is gated on the symbol checks: a target whose modules would not load on its own
kernel gets no package, and every reason is listed.
"""

from __future__ import annotations

import datetime
import email.utils
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pvfront import depmod, metadata, symcheck, symvers
from pvfront.depmod import ModuleIndex
from pvfront.elf import read_all
from pvfront.errors import FailedError, UsageError
from pvfront.kerneltree import KernelTree
from pvfront.metadata import Family


@dataclass(frozen=True)
class Signing:
    key: Path
    cert: Path

    @classmethod
    def from_options(cls, key: str | None, cert: str | None) -> Signing | None:
        if bool(key) != bool(cert):
            raise UsageError("--sign-key and --sign-cert go together")
        return cls(Path(key), Path(cert)) if key and cert else None


@dataclass(frozen=True)
class Stage:
    """build/<target>/stage/: the modules as installed, their index and load configuration."""

    tree: KernelTree
    root: Path
    index: ModuleIndex
    exclusive: bool  # its modprobe.d keeps the in-tree transport off pvfront's devices

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.tree.release

    @property
    def load_order_file(self) -> Path:
        return self.root.parent / "load-order"

    def load_order(self) -> list[str]:
        return self.index.load_order()

    def module_paths(self) -> list[Path]:
        return [self.modules_dir / self.index.paths[name] for name in self.load_order()]

    def configuration(self) -> list[str]:
        """The load configuration's files (everything outside lib/), relative to the root."""
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and p.relative_to(self.root).parts[0] != "lib"
        )


@dataclass
class PackageResult:
    target_id: str
    deb: Path | None = None
    refused: list[str] = field(default_factory=list)  # why modules would not load
    staged: Stage | None = None


def sign_modules(tree: KernelTree, modules: list[Path], signing: Signing) -> None:
    """Append a signature with the target's own kbuild sign-file."""
    sign_file = tree.headers_dir / "scripts" / "sign-file"
    for path in (signing.key, signing.cert):
        if not path.is_file():
            raise UsageError(f"{path}: no such signing key or certificate")
    for module in modules:
        proc = subprocess.run(
            [str(sign_file), "sha256", str(signing.key), str(signing.cert), str(module)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise UsageError(f"{signing.key}: sign-file cannot sign {module.name}: {reason}")


def stage(
    tree: KernelTree,
    family: Family,
    built: list[Path],
    root: Path,
    *,
    exclusive: bool = False,
    signing: Signing | None = None,
) -> Stage:
    """Lay out the modules as they install, indexed by depmod, with the load configuration
    computed from that index."""
    shutil.rmtree(root, ignore_errors=True)
    modules_dir = root / "lib" / "modules" / tree.release
    install_dir = modules_dir / family.install_dir
    install_dir.mkdir(parents=True)
    by_name = {p.name.removesuffix(".ko"): p for p in built}
    relpaths = []
    for module in family.modules:
        if module.name not in by_name:
            raise UsageError(f"{family.declaration}: {module.name}.ko was not built")
        shutil.copy2(by_name[module.name], install_dir / f"{module.name}.ko")
        relpaths.append(f"{family.install_dir}/{module.name}.ko")
    for relpath in relpaths:
        # As Debian ships its own modules: without debug info, a fifth of the size.
        subprocess.run(["strip", "--strip-debug", str(modules_dir / relpath)], check=True)
    if signing:
        sign_modules(tree, [modules_dir / r for r in relpaths], signing)
    (modules_dir / "modules.order").write_text("".join(f"{r}\n" for r in relpaths))
    depmod.run(root, tree, f"the {tree.target.id} stage")
    index = ModuleIndex.read(modules_dir, tree.release)
    for relative, text in metadata.load_config_files(family, index, exclusive=exclusive).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if "/hooks/" in relative or "/scripts/" in relative:
            path.chmod(0o755)
    result = Stage(tree, root, index, exclusive)
    result.load_order_file.write_text("".join(f"{n}\n" for n in index.load_order()))
    return result


def gate(tree: KernelTree, modules: list[Path]) -> list[str]:
    """Every reason a module would not load on the tree's kernel; empty when all would."""
    report = symcheck.check_modules(read_all(modules), symvers.kernel_for_tree(tree))
    return [f"{v.module}: {v.reason}" for v in report.verdicts if not v.loads]


def package_name(tree: KernelTree) -> str:
    return f"pvfront-modules-{tree.release}"


def _md5sums(root: Path) -> str:
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "DEBIAN" not in p.parts):
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        lines.append(f"{digest}  {path.relative_to(root)}\n")
    return "".join(lines)


def _normalise(root: Path, epoch: int) -> None:
    """Directories 0755, files 0755 when executable and 0644 otherwise, whatever the umask;
    every time `epoch`, whatever it was (dpkg-deb only clamps later times to it)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            executable = path.is_dir() or path.stat().st_mode & 0o100
            path.chmod(0o755 if executable else 0o644)
        os.utime(path, (epoch, epoch), follow_symlinks=False)


# The SPDX identifiers of the sources that the copyright file's one licence, GPL-2, covers.
_GPL_2 = ("GPL-2.0", "GPL-2.0-only")
_SPDX = re.compile(r"SPDX-License-Identifier:\s*(\S+)")


def copyright_file(family: Family) -> str:
    """/usr/share/doc/<package>/copyright, machine-readable (DEP-5): the family's sources are
    GPL-2 as each one's SPDX line says; a source without one, or under another licence, is an
    error rather than a wrong copyright file."""
    for path in family.source_files():
        match = _SPDX.search(path.read_text())
        if not match or match.group(1) not in _GPL_2:
            found = match.group(1) if match else "no SPDX-License-Identifier"
            raise UsageError(f"{path}: {found}: the packages' copyright file says GPL-2 only")
    return metadata.render("copyright.j2", family=family)


def changelog_name(family: Family) -> str:
    """Debian policy 12.7: a native package's (a version without a Debian revision, as pvfront
    is its own upstream) changelog is changelog.gz; otherwise changelog.Debian.gz."""
    return "changelog.Debian.gz" if "-" in family.version else "changelog.gz"


def doc_files(family: Family, package: str) -> dict[str, bytes]:
    """The files every package has under /usr/share/doc/<package>/: copyright and a changelog
    entry for the version, dated SOURCE_DATE_EPOCH and compressed reproducibly."""
    doc = f"usr/share/doc/{package}"
    return {
        f"{doc}/copyright": copyright_file(family).encode(),
        f"{doc}/{changelog_name(family)}": _gzip(
            changelog(family, package).encode(), source_date_epoch(family)
        ),
    }


def changelog(family: Family, source: str) -> str:
    """The changelog entry of the family's version for a (source) package, dated
    SOURCE_DATE_EPOCH."""
    epoch = source_date_epoch(family)
    date = email.utils.format_datetime(datetime.datetime.fromtimestamp(epoch, datetime.UTC))
    return metadata.render("changelog.j2", family=family, package=source, date=date)


def lintian_overrides(family: Family, package: str, exclusive: bool) -> dict[str, bytes]:
    """The package's lintian overrides, each with its reason: only an exclusive package has
    one (its modprobe.d `install` rule, which no softdep can replace)."""
    if not exclusive:
        return {}
    text = metadata.render("lintian-overrides.j2", family=family, package=package)
    return {f"usr/share/lintian/overrides/{package}": text.encode()}


def _write_deb(
    work: Path, staged: Stage, family: Family, package: str, control: dict[str, str], deb: Path
) -> Path:
    """dpkg-deb of a laid-out root, with its doc files and lintian overrides: DEBIAN/ from
    control (maintainer scripts executable), with the conffiles under /etc and md5sums written
    from the tree."""
    files = {**doc_files(family, package), **lintian_overrides(family, package, staged.exclusive)}
    for relative, data in files.items():
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        (work / relative).write_bytes(data)
    debian = work / "DEBIAN"
    debian.mkdir()
    for name, text in control.items():
        (debian / name).write_text(text)
        if name != "control":
            (debian / name).chmod(0o755)
    etc = work / "etc"
    conffiles = sorted(f"/{p.relative_to(work)}" for p in etc.rglob("*") if p.is_file())
    (debian / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    (debian / "md5sums").write_text(_md5sums(work))
    epoch = source_date_epoch(family)
    _normalise(work, epoch)
    deb.parent.mkdir(parents=True, exist_ok=True)
    # dpkg-deb sorts the members and, given SOURCE_DATE_EPOCH, stamps the ar members with it:
    # the package no longer depends on when the files were written.
    proc = subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(work), str(deb)],
        capture_output=True,
        text=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
    )
    if proc.returncode != 0:
        raise FailedError(f"{deb.name}: dpkg-deb failed: {proc.stderr.strip()}")
    return deb


def build_deb(staged: Stage, family: Family, out_dir: Path) -> Path:
    """A Debian binary package of the stage, without the files beside its module directories:
    depmod's index and the kernel's lists describe all of the kernel's modules, and belong to
    the installed system's depmod and kernel package."""
    tree = staged.tree
    work = staged.root.parent / "deb"
    shutil.rmtree(work, ignore_errors=True)

    def indexes(directory: str, names: list[str]) -> list[str]:
        if Path(directory) != staged.modules_dir:
            return []
        return [name for name in names if not (staged.modules_dir / name).is_dir()]

    shutil.copytree(staged.root, work, symlinks=True, ignore=indexes)
    if tree.merged_usr:
        # /lib is /usr/lib there: the modules go where the kernel's own are, under the real
        # path (the same files on the installed system).
        (work / "usr" / "lib").mkdir(parents=True, exist_ok=True)
        os.replace(work / "lib" / "modules", work / "usr" / "lib" / "modules")
        (work / "lib").rmdir()
    context = {
        "family": family,
        "release": tree.release,
        "arch": tree.target.arch,
        "package": package_name(tree),
    }
    control = {
        name: metadata.render(f"{name}.j2", **context) for name in ("control", "postinst", "postrm")
    }
    return _write_deb(
        work,
        staged,
        family,
        package_name(tree),
        control,
        out_dir / f"{package_name(tree)}_{family.version}_{tree.target.arch}.deb",
    )


def dkms_package_name(family: Family) -> str:
    return f"{family.name}-dkms"


def package_target(
    tree: KernelTree,
    family: Family,
    built: list[Path],
    work_dir: Path,
    out_dir: Path,
    *,
    signing: Signing | None = None,
    exclusive: bool = False,
) -> PackageResult:
    """Gate one target's modules on the symbol checks; if all would load, stage and package."""
    result = PackageResult(tree.target.id)
    result.refused = gate(tree, built)
    if result.refused:
        return result
    staged = stage(tree, family, built, work_dir / "stage", exclusive=exclusive, signing=signing)
    result.deb = build_deb(staged, family, out_dir)
    result.staged = staged
    return result


def dkms_source_files(family: Family) -> dict[str, bytes]:
    """The DKMS source tree's files: the sources, a generated Kbuild and metadata, dkms.conf."""
    files = {p.name: p.read_bytes() for p in family.source_files()}
    generated = metadata.build_files(family, "dkms", "$(src)", "$(src)")
    generated["dkms.conf"] = metadata.render("dkms.conf.j2", family=family)
    files.update({name: text.encode() for name, text in generated.items()})
    return files


def source_date_epoch(family: Family) -> int:
    """The timestamp every archive carries: $SOURCE_DATE_EPOCH (reproducible-builds.org), or
    the family's release date, as dpkg-buildpackage takes the changelog's."""
    value = os.environ.get("SOURCE_DATE_EPOCH", str(family.released_epoch))
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r}: not a number of seconds since 1970")
    return int(value)


def _gzip(data: bytes, epoch: int) -> bytes:
    """gzip -9n: best compression, the header's time `epoch` and no file name."""
    return gzip.compress(data, compresslevel=9, mtime=epoch)


def write_tar_gz(tarball: Path, files: dict[str, bytes], epoch: int) -> Path:
    """A .tar.gz of `files` (archive path -> content) that depends on nothing but them: members
    sorted, owned by root:root, mode 0644, timestamped `epoch`, in the tar and in the gzip
    header (which also carries no file name)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, epoch
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            archive.addfile(info, io.BytesIO(files[name]))
    tarball.write_bytes(_gzip(raw.getvalue(), epoch))
    return tarball


def build_dkms_source(family: Family, out_dir: Path) -> Path:
    """A DKMS source tarball, for `dkms ldtarball` or a tree under /usr/src; byte-reproducible."""
    top = f"{family.name}-{family.version}"
    files = dkms_source_files(family)
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_tar_gz(
        out_dir / f"{family.name}-dkms_{family.version}.tar.gz",
        {f"{top}/{name}": data for name, data in files.items()},
        source_date_epoch(family),
    )
