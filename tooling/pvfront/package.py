"""Release packages: a staged module tree per target, a Debian binary package, a DKMS source.

Packaging is gated on the symbol checks: a target whose modules would not load on its own
kernel gets no package, and every reason is listed.
"""

from __future__ import annotations

import datetime
import email.utils
import gzip
import io
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pvfront import depmod, dpkgbuild, metadata, symcheck, symvers
from pvfront.depmod import ModuleIndex
from pvfront.elf import read_all
from pvfront.errors import UsageError
from pvfront.kerneltree import KernelTree
from pvfront.metadata import Family
from pvfront.workspace import Workspace


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


def changelog(family: Family, source: str) -> str:
    """The changelog entry of the family's version for a (source) package, dated
    SOURCE_DATE_EPOCH."""
    epoch = source_date_epoch(family)
    date = email.utils.format_datetime(datetime.datetime.fromtimestamp(epoch, datetime.UTC))
    return metadata.render("changelog.j2", family=family, package=source, date=date)


def lintian_overrides(family: Family, package: str, exclusive: bool) -> dict[str, str]:
    """debian/<package>.lintian-overrides, for dh_lintian to install, when the package has
    any: only an exclusive package has one, with its reason (its modprobe.d `install` rule,
    which no softdep can replace)."""
    if not exclusive:
        return {}
    text = metadata.render("lintian-overrides.j2", family=family, package=package)
    return {f"{package}.lintian-overrides": text}


def _packaged_path(tree: KernelTree, relative: str) -> str:
    """Where a staged file is installed: on a merged-/usr system (/lib is /usr/lib) the modules
    go under the real path, where the kernel's own are."""
    if tree.merged_usr and relative.startswith("lib/modules/"):
        return f"usr/{relative}"
    return relative


def modules_debian_files(staged: Stage, family: Family, packaged: list[str]) -> dict[str, str]:
    """debian/'s files by name for the binary-only build of pvfront-modules-<release>, which
    installs the packaged paths from root/."""
    tree = staged.tree
    package = package_name(tree)
    context = {
        "family": family,
        "release": tree.release,
        "arch": tree.target.arch,
        "package": package,
    }
    install = [f"root/{path} {Path(path).parent}/\n" for path in packaged]
    files = {
        "control": metadata.render(
            "modules-control.j2", standards_version=dpkgbuild.STANDARDS_VERSION, **context
        ),
        "changelog": changelog(family, package),
        "copyright": copyright_file(family),
        "rules": metadata.render("modules-rules.j2", **context),
        "source/format": "3.0 (native)\n",
        f"{package}.install": "".join(install),
        f"{package}.postinst": metadata.render("postinst.j2", **context),
        f"{package}.postrm": metadata.render("postrm.j2", **context),
    }
    return files | lintian_overrides(family, package, staged.exclusive)


def build_deb(ws: Workspace, staged: Stage, family: Family, out_dir: Path) -> Path:
    """pvfront-modules-<release>: the stage built into a Debian binary package by debhelper
    (`dpkg-buildpackage --build=any`) in the build root of the target's suite. The files beside
    the module directories stay out: depmod's index and the kernel's lists describe all of the
    kernel's modules, and belong to the installed system's depmod and kernel package. Binary
    only: the modules' source is pvfront's source package."""
    tree = staged.tree
    package = package_name(tree)
    files: dict[str, bytes] = {}
    executable = set()
    for path in sorted(p for p in staged.root.rglob("*") if p.is_file()):
        if path.parent == staged.modules_dir:
            continue
        packaged = _packaged_path(tree, str(path.relative_to(staged.root)))
        files[f"root/{packaged}"] = path.read_bytes()
        if path.stat().st_mode & 0o100:
            executable.add(f"root/{packaged}")
    packaged_paths = [name.removeprefix("root/") for name in files]
    for name, text in modules_debian_files(staged, family, packaged_paths).items():
        files[f"debian/{name}"] = text.encode()
        if name == "rules" or name.endswith((".postinst", ".postrm")):
            executable.add(f"debian/{name}")
    work = staged.root.parent / "modules-package"
    shutil.rmtree(work, ignore_errors=True)
    source_tree = dpkgbuild.write_tree(work / f"{package}-{family.version}", files, executable)
    dpkgbuild.run(ws, tree.target, source_tree, "any", source_date_epoch(family))
    deb = work / f"{package}_{family.version}_{tree.target.arch}.deb"
    out_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(deb, out_dir / deb.name))


def dkms_package_name(family: Family) -> str:
    return f"{family.name}-dkms"


def package_target(
    ws: Workspace,
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
    result.deb = build_deb(ws, staged, family, out_dir)
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
