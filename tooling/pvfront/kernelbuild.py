"""Kernels pvfront builds itself: a suite's kernel source with a Kconfig fragment.

A target that declares `kconfig` in targets.toml (the debug kernel) does not take its kernel
from the archive's images. Its suite's `linux-source-<line>` package (the kernel Debian ships,
with Debian's patches) is configured with `make allnoconfig` plus the fragment and built with
`make bindeb-pkg` in the suite's build root, so the suite's own compiler builds it. The result
is the pair of packages a Debian kernel is, `linux-image-<release>` and
`linux-headers-<release>`, which provisioning extracts like any other target's; everything
downstream (module builds, symcheck, packages, boots) treats the target like the others.

The release is `<upstream version>-<flavour>` and the packages' version names the source
package's version and a digest of the recipe (the fragment, the build steps), so a new source
package or an edited fragment is a new kernel, and anything else is the cached one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pvfront import buildroot
from pvfront.apt import AptView, Found
from pvfront.errors import SetupError
from pvfront.kerneltree import KernelTree, parse_config
from pvfront.targets import Target
from pvfront.workspace import Workspace

Log = Callable[[str], None]

# Changing how a kernel is configured or built changes this, and every kernel is built anew.
RECIPE = "1"
# What a kernel build needs in the build root beyond buildroot.BASE_PACKAGES.
BUILD_PACKAGES = (
    "gcc",
    "libc6-dev",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "rsync",
    "xz-utils",
    "dpkg-dev",
    "fakeroot",
)


@dataclass(frozen=True)
class SourceKernel:
    """The kernel a source target builds: from which source package, with which recipe."""

    target: Target
    source: Found  # the suite's linux-source-<line>
    busybox: Found
    fragment: str  # the Kconfig fragment's text

    @property
    def upstream(self) -> str:
        """The kernel version of the source package: 6.1.192 for 6.1.192-3."""
        return self.source[1].version.split(":", 1)[-1].split("-", 1)[0]

    @property
    def release(self) -> str:
        return f"{self.upstream}-{self.target.flavour}"

    @property
    def headers_rel(self) -> str:
        return f"usr/src/linux-headers-{self.release}"

    @property
    def digest(self) -> str:
        text = repr((RECIPE, BUILD_PACKAGES, self.source[1].version, self.fragment))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def package_version(self) -> str:
        """The built packages' version: the source's, then pvfront's recipe digest."""
        return f"{self.source[1].version}+pvfront.{self.digest}"

    @property
    def package_names(self) -> tuple[str, str]:
        return (f"linux-image-{self.release}", f"linux-headers-{self.release}")

    @property
    def versions(self) -> dict[str, str]:
        built = dict.fromkeys(self.package_names, self.package_version)
        return {**built, self.busybox[1].name: self.busybox[1].version}

    def installed_as(self, tree: KernelTree | None) -> bool:
        return tree is not None and (tree.release, tree.packages) == (self.release, self.versions)


def resolve(view: AptView, target: Target) -> SourceKernel:
    """The newest kernel source of the target's suite, through Debian's `linux-source`
    metapackage, which names the suite's current line."""
    assert target.kconfig is not None
    try:
        fragment = target.kconfig.read_text()
    except OSError as exc:
        raise SetupError(f"{target.kconfig}: cannot read: {exc.strerror}") from None
    suites = tuple(dict.fromkeys((*target.suites, target.base_suite)))
    meta = view.newest("linux-source", suites, target.arch)
    if meta is None:
        raise SetupError(f"{target.id}: no linux-source in {', '.join(suites)}")
    lines = [d for d in meta[1].depends() if re.fullmatch(r"linux-source-\d+\.\d+", d)]
    if not lines:
        raise SetupError(f"{target.id}: linux-source {meta[1].version} names no linux-source-X.Y")
    source = view.newest(lines[0], suites, target.arch)
    if source is None:
        raise SetupError(f"{target.id}: {lines[0]} is not in {', '.join(suites)}")
    busybox = view.newest("busybox-static", (target.base_suite,), target.arch)
    if busybox is None:
        raise SetupError(f"{target.id}: no busybox-static for {target.arch} in {target.base_suite}")
    return SourceKernel(target, source, busybox, fragment)


def options_not_taken(fragment: str, config: str) -> list[str]:
    """The fragment's settings a resolved .config does not have: Kconfig drops an option whose
    dependencies are not met without a word, and a checker silently off checks nothing."""
    have = parse_config(config)
    return [
        f"{name}={value} (got {have.get(name, 'n')})"
        for name, value in parse_config(fragment).items()
        if have.get(name, "n") != value
    ]


def _work_dir(ws: Workspace, target: Target) -> Path:
    return ws.cache / "kernels" / target.id


def built_debs(ws: Workspace, kernel: SourceKernel) -> list[Path] | None:
    """The built image and headers packages in the download cache, or None."""
    found = []
    for name in kernel.package_names:
        deb = ws.cache / "debs" / f"{name}_{kernel.package_version}_{kernel.target.arch}.deb"
        if not deb.is_file():
            return None
        found.append(deb)
    return found


def _extract_source(kernel: SourceKernel, deb: Path, src: Path) -> None:
    """The kernel tree from linux-source's tarball, without unpacking the package's docs."""
    line = kernel.source[1].name
    src.mkdir(parents=True)
    script = (
        'dpkg-deb --fsys-tarfile "$1" | tar -xO "./usr/src/$2.tar.xz" '
        '| tar -xJ -C "$3" --strip-components=1'
    )
    proc = subprocess.run(
        ["sh", "-ec", script, "sh", str(deb), line, str(src)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"{deb}: cannot extract {line}.tar.xz: {reason}")


def _run_in_root(root: buildroot.BuildRoot, work: Path, script: str, step: str, log: Log) -> None:
    """A shell script in the build root with the work directory bound; the log keeps all of
    its output, the error names the last lines."""
    out_log = work / f"{step.split()[0]}.log"
    started = time.monotonic()
    with out_log.open("w") as sink:
        proc = subprocess.run(
            root.command(["sh", "-ec", script], [work]),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, LC_ALL="C"),
        )
    if proc.returncode != 0:
        tail = [line for line in out_log.read_text(errors="replace").splitlines() if line][-1:]
        raise SetupError(f"{out_log}: kernel {step} failed: {(tail or ['no output'])[0]}")
    log(f"{root.spec.name}: kernel {step} ({time.monotonic() - started:.0f} s)")


def build(ws: Workspace, kernel: SourceKernel, source_deb: Path, jobs: int, log: Log) -> list[Path]:
    """Configure and build the kernel in the suite's build root; its image and headers
    packages end in the download cache. The caller holds the target's lock."""
    target = kernel.target
    root = buildroot.ensure_packages(ws, target, BUILD_PACKAGES, log)
    work = _work_dir(ws, target)
    shutil.rmtree(work, ignore_errors=True)
    src, out = work / "src", work / "out"
    log(
        f"{target.id}: building kernel {kernel.release} from {kernel.source[1].name} "
        f"{kernel.source[1].version} with {target.kconfig}"
    )
    _extract_source(kernel, source_deb, src)
    out.mkdir()
    (work / "fragment.config").write_text(kernel.fragment)
    make = f'make -C "{src}" O="{out}" ARCH={target.architecture.kbuild_arch}'
    with root.in_use(log):
        _run_in_root(
            root,
            work,
            f"{make} allnoconfig\n"
            f'"{src}/scripts/kconfig/merge_config.sh" -m -O "{out}" "{out}/.config" '
            f'"{work}/fragment.config"\n'
            f"{make} olddefconfig\n",
            "configuration",
            log,
        )
        missing = options_not_taken(kernel.fragment, (out / ".config").read_text())
        if missing:
            raise SetupError(
                f"{target.kconfig}: {len(missing)} option(s) did not take on "
                f"{kernel.source[1].name} {kernel.source[1].version}: {', '.join(missing)}"
            )
        _run_in_root(
            root,
            work,
            f"{make} -j{jobs} LOCALVERSION=-{target.flavour} "
            f"KDEB_PKGVERSION={kernel.package_version} KDEB_COMPRESS=gzip DPKG_FLAGS=-d "
            "KBUILD_BUILD_USER=pvfront KBUILD_BUILD_HOST=pvfront bindeb-pkg",
            "build",
            log,
        )
    release = _built_release(out)
    if release != kernel.release:
        raise SetupError(f"{out}: built kernel {release}, expected {kernel.release}")
    debs_dir = ws.cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    placed = []
    for name in kernel.package_names:
        deb = f"{name}_{kernel.package_version}_{target.arch}.deb"
        if not (work / deb).is_file():
            raise SetupError(f"{work}: the kernel build made no {deb}")
        os.replace(work / deb, debs_dir / deb)
        placed.append(debs_dir / deb)
    # The logs stay for the curious; the tree, the objects and what else bindeb-pkg made
    # (linux-libc-dev, .changes) go: a few GiB nobody reads.
    for leftover in work.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.suffix != ".log":
            leftover.unlink()
    record = {"release": release, "version": kernel.package_version, "digest": kernel.digest}
    (work / "built.json").write_text(json.dumps(record, indent=2) + "\n")
    return placed


def _built_release(out: Path) -> str:
    try:
        return (out / "include" / "config" / "kernel.release").read_text().strip()
    except OSError:
        return "(no include/config/kernel.release)"
