"""The Debian source package `pvfront`, built by dpkg-buildpackage into `pvfront-dkms`.

Its debian/ directory is generated from kmod/modules.toml, like everything else pvfront ships,
into a native source tree (pvfront is its own upstream): the DKMS source under `dkms/`, the
load configuration of a stage under `config/`, and debhelper (compat 13) with dh-dkms doing
the packaging. It is built in the build root of a target's suite, with that suite's
dpkg-dev, debhelper and dh-dkms, as the suite's own packages are; given the same
SOURCE_DATE_EPOCH, two builds give the same .dsc, source tarball and .deb.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pvfront import dpkgbuild, metadata
from pvfront.metadata import Family
from pvfront.package import (
    Stage,
    changelog,
    copyright_file,
    dkms_package_name,
    dkms_source_files,
    lintian_overrides,
    source_date_epoch,
)
from pvfront.targets import Target
from pvfront.workspace import Workspace


@dataclass(frozen=True)
class SourcePackage:
    """What one dpkg-buildpackage run produced, moved to the output directory."""

    dsc: Path
    tarball: Path  # the native source, which the .dsc names
    debs: tuple[Path, ...]
    changes: Path
    buildinfo: Path


def source_name(family: Family) -> str:
    return family.name


def debian_files(family: Family, staged: Stage, dkms_conf: bytes) -> dict[str, str]:
    """debian/'s files by name: the package installs the stage's load configuration from
    config/, and dh_dkms installs dkms_conf."""
    package = dkms_package_name(family)
    context = {"family": family, "package": package}
    install = [f"dkms/* usr/src/{family.name}-{family.version}/\n"]
    install += [f"config/{path} {Path(path).parent}/\n" for path in staged.configuration()]
    files = {
        "control": metadata.render(
            "debian-control.j2", standards_version=dpkgbuild.STANDARDS_VERSION, **context
        ),
        "changelog": changelog(family, source_name(family)),
        "copyright": copyright_file(family),
        "rules": metadata.render("debian-rules.j2", **context),
        "source/format": "3.0 (native)\n",
        f"{package}.dkms": dkms_conf.decode(),
        f"{package}.install": "".join(install),
        f"{package}.postinst": metadata.render("dkms-postinst.j2", **context),
        f"{package}.postrm": metadata.render("dkms-postrm.j2", **context),
    }
    return files | lintian_overrides(family, package, staged.exclusive)


def write_tree(family: Family, staged: Stage, parent: Path) -> Path:
    """The unpacked source tree `<parent>/<name>-<version>/`, made anew."""
    dkms = dkms_source_files(family)
    dkms_conf = dkms.pop("dkms.conf")  # debian/<package>.dkms: dh_dkms installs it
    files = {f"dkms/{name}": data for name, data in dkms.items()}
    executable = set()
    for path in staged.configuration():
        source = staged.root / path
        files[f"config/{path}"] = source.read_bytes()
        if source.stat().st_mode & 0o100:
            executable.add(f"config/{path}")
    for name, text in debian_files(family, staged, dkms_conf).items():
        files[f"debian/{name}"] = text.encode()
        if name == "rules" or name.endswith((".postinst", ".postrm")):
            executable.add(f"debian/{name}")
    tree = parent / f"{source_name(family)}-{family.version}"
    return dpkgbuild.write_tree(tree, files, executable)


def build(
    ws: Workspace, target: Target, family: Family, staged: Stage, out_dir: Path
) -> SourcePackage:
    """Write the source tree beside the stage and build it, source and binary, in the build
    root of the target's suite; the results go to out_dir."""
    work = staged.root.parent / "source-package"
    shutil.rmtree(work, ignore_errors=True)
    source_tree = write_tree(family, staged, work)
    dpkgbuild.run(ws, target, source_tree, "source,all", source_date_epoch(family))
    return _collect(work, family, out_dir)


def _collect(work: Path, family: Family, out_dir: Path) -> SourcePackage:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{source_name(family)}_{family.version}"

    def take(path: Path) -> Path:
        return Path(shutil.move(path, out_dir / path.name))

    [dsc] = work.glob(f"{stem}.dsc")
    [tarball] = work.glob(f"{stem}.tar.*")
    [changes] = work.glob(f"{stem}_*.changes")
    [buildinfo] = work.glob(f"{stem}_*.buildinfo")
    debs = tuple(take(p) for p in sorted(work.glob("*.deb")))
    return SourcePackage(take(dsc), take(tarball), debs, take(changes), take(buildinfo))
