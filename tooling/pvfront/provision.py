"""Provision kernel targets: resolve, download and extract real Debian kernels into the cache.

A provisioned target is a directory `<cache>/targets/<id>/root/` holding the extracted headers,
kbuild tools, unsigned kernel image with its in-tree modules, and busybox-static, plus a
`target.json` recording what was resolved. Once there, nothing here needs the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pvfront import architectures, kernelbuild
from pvfront.apt import (
    AptIndex,
    AptView,
    Found,
    PackageVersion,
    cached_deb,
    download_line,
    system_mirror,
)
from pvfront.errors import ArchiveUnavailable, SetupError
from pvfront.kernelbuild import SourceKernel
from pvfront.kerneltree import KernelTree
from pvfront.locks import locked
from pvfront.targets import Target
from pvfront.workspace import Workspace

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Resolution:
    """The packages that make up a target's newest kernel, before download."""

    target: Target
    abi: str
    packages: tuple[tuple[AptIndex, PackageVersion], ...]

    @property
    def release(self) -> str:
        return f"{self.abi}-{self.target.flavour}"

    @property
    def headers_rel(self) -> str:
        return f"usr/src/linux-headers-{self.release}"

    @property
    def versions(self) -> dict[str, str]:
        return {
            p.name if p.arch == self.target.arch else f"{p.name}:{p.arch}": p.version
            for _, p in self.packages
        }

    def installed_as(self, tree: KernelTree | None) -> bool:
        """Whether a cached tree is this kernel, from these very packages."""
        return tree is not None and (tree.release, tree.packages) == (self.release, self.versions)


# What provisioning installs: a kernel from the archive's packages or one built from source.
Planned = Resolution | SourceKernel


@dataclass
class FetchReport:
    trees: list[KernelTree] = field(default_factory=list)
    errors: dict[str, SetupError] = field(default_factory=dict)


def target_dir(ws: Workspace, target: Target) -> Path:
    return ws.cache / "targets" / target.id


def load_tree(ws: Workspace, target: Target) -> KernelTree | None:
    """The cached tree of a target if it is complete, else None."""
    record = target_dir(ws, target) / "target.json"
    try:
        data = json.loads(record.read_text())
        tree = KernelTree(
            target,
            target_dir(ws, target) / "root",
            data["release"],
            dict(data["packages"]),
            data["headers"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if tree.problems() else tree


def apt_view(ws: Workspace) -> AptView:
    return AptView(system_mirror(), ws.cache / "apt")


def update_indexes(view: AptView, targets: list[Target], log: Log) -> dict[tuple[str, str], str]:
    """Refresh every index the targets need; return the errors by (suite, arch)."""
    wanted: set[tuple[str, str]] = set()
    host = architectures.host().debian_arch
    for target in targets:
        for suite in (*target.suites, target.base_suite):
            wanted.add((suite, target.arch))
            wanted.add((suite, host))  # the tree's kbuild tools run on this host
    errors: dict[tuple[str, str], str] = {}
    indexes = [(key, view.index(*key)) for key in sorted(wanted)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda pair: (pair[0], pair[1] and pair[1].update(log)), indexes)
        for key, error in results:
            if error:
                errors[key] = error
    return errors


def _abis(view: AptView, target: Target) -> list[str]:
    """The kernel ABIs the target's flavour metapackage names, newest version first."""
    metas = view.all_versions(f"linux-headers-{target.flavour}", target.suites, target.arch)
    if not metas:
        raise SetupError(
            f"{target.id}: no linux-headers-{target.flavour} for {target.arch} in "
            f"{', '.join(target.suites)}"
        )
    suffix = f"-{target.flavour}"
    abis: list[str] = []
    for _, meta in metas:
        for dep in meta.depends():
            if dep.startswith("linux-headers-") and dep.endswith(suffix):
                abi = dep[len("linux-headers-") : -len(suffix)]
                if abi not in abis:
                    abis.append(abi)
    if not abis:
        raise SetupError(f"{target.id}: linux-headers-{target.flavour} names no headers package")
    return abis


def candidates(view: AptView, target: Target) -> list[Resolution]:
    """Every kernel of the target's flavour the indexes offer, newest ABI first."""
    return [_resolve_abi(view, target, abi) for abi in _abis(view, target)]


def resolve(view: AptView, target: Target) -> Resolution:
    """The newest kernel of the target's flavour and every package it needs."""
    return _resolve_abi(view, target, _abis(view, target)[0])


def _resolve_abi(view: AptView, target: Target, abi: str) -> Resolution:
    name = f"linux-headers-{abi}-{target.flavour}"
    headers = view.newest(name, target.suites, target.arch)
    if headers is None:
        raise _missing(target, f"{target.id}: {name} is not in {', '.join(target.suites)}")
    version = headers[1].version
    picked = [headers]
    for dep in headers[1].depends():
        if dep.startswith("linux-headers-") and "-common" in dep:
            picked.append(_need(view, target, dep, version, target.arch))
        elif dep.startswith("linux-kbuild-"):
            # The tree's kbuild tools run here: the host's, whatever the kernel's architecture.
            picked.append(_need(view, target, dep, version, architectures.host().debian_arch))
        elif dep == f"linux-base-{abi}-{target.flavour}":
            picked.append(_need(view, target, dep, version, target.arch))
    if not any(p.name.startswith("linux-kbuild-") for _, p in picked):
        raise SetupError(f"{target.id}: {name} depends on no linux-kbuild package")
    for image in _image_packages(view, target, f"{abi}-{target.flavour}"):
        picked.append(_need(view, target, image, version, target.arch))
    busybox = view.newest("busybox-static", (target.base_suite,), target.arch)
    if busybox is None:
        raise SetupError(f"{target.id}: no busybox-static for {target.arch} in {target.base_suite}")
    picked.append(busybox)
    return Resolution(target, abi, tuple(picked))


def _image_packages(view: AptView, target: Target, release: str) -> list[str]:
    """The unsigned packages that carry a release's vmlinuz and in-tree modules.

    Up to 6.12 one `linux-image-<release>-unsigned` holds both; from 7.x Debian splits the
    image into `linux-binary-unsigned-<release>` (vmlinuz) and `linux-modules-<release>`.
    """
    suites = tuple(dict.fromkeys((*target.suites, target.base_suite)))
    single = f"linux-image-{release}-unsigned"
    if view.newest(single, suites, target.arch):
        return [single]
    split = [f"linux-binary-unsigned-{release}", f"linux-modules-{release}"]
    if all(view.newest(name, suites, target.arch) for name in split):
        return split
    raise _missing(
        target, f"{target.id}: neither {single} nor {' + '.join(split)} is in {', '.join(suites)}"
    )


def _missing(target: Target, message: str) -> SetupError:
    """A package the target needs is not in the archive: a broken stable archive is an error,
    an unstable one is allowed to be incomplete for a while (a transition, a build lagging)."""
    if target.unstable:
        return ArchiveUnavailable(f"{message} (unstable archive: unavailable today)")
    return SetupError(message)


def _need(view: AptView, target: Target, name: str, version: str, arch: str) -> Found:
    suites = (*target.suites, target.base_suite, f"{target.base_suite}-security")
    found = view.exact(name, version, tuple(dict.fromkeys(suites)), arch)
    if found is None:
        raise _missing(target, f"{target.id}: {name}:{arch} {version} is not in the archive")
    return found


def _rewrite_headers_makefile(resolution: Planned, staging: Path, root: Path) -> None:
    """Debian's headers Makefile includes the common tree by absolute path: point it at the
    tree's final root."""
    makefile = staging / resolution.headers_rel / "Makefile"
    try:
        text = makefile.read_text()
    except FileNotFoundError:
        name = f"linux-headers-{resolution.release}"
        raise SetupError(
            f"{makefile}: no such file: {name} {resolution.versions.get(name, '')} is not a "
            "kernel headers package pvfront can build with"
        ) from None
    fixed = re.sub(r"(?m)^(include\s+)/usr/src/", rf"\g<1>{root}/usr/src/", text)
    if fixed != text:
        makefile.write_text(fixed)


def _extract(debs: list[Path], dest: Path) -> None:
    for deb in debs:
        try:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            reason = exc.stderr.decode().strip()
            raise SetupError(f"{deb}: dpkg-deb -x failed: {reason}") from None
    _merge_usr(dest)


def _merge_usr(root: Path) -> None:
    """Give a merged-/usr tree (Debian 13 on) the /lib and /bin links a real system has.

    Packages of a merged-/usr suite ship only usr/lib/modules and usr/bin; depmod, modprobe
    and the harness look in /lib/modules and /bin as they do on an installed system.
    """
    for top in ("lib", "bin"):
        if (root / "usr" / top).is_dir() and not (root / top).exists():
            (root / top).symlink_to(f"usr/{top}")


# Directories being extracted or being replaced; whatever a killed process left under this
# name is removed by the next one that holds the lock.
_UNFINISHED = ".unfinished-"


@contextlib.contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    """A private directory in parent to extract into, gone at the end unless renamed into
    place; the caller holds the lock on parent, so any earlier one is a killed run's."""
    parent.mkdir(parents=True, exist_ok=True)
    for leftover in parent.glob(f"{_UNFINISHED}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=_UNFINISHED))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _put_in_place(staging: Path, final: Path) -> None:
    """Rename a complete staging directory to final, moving an older final out of the way."""
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=_UNFINISHED))
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def _target_lock(
    ws: Workspace, target: Target, log: Log
) -> contextlib.AbstractContextManager[None]:
    """Held while a target's tree is changed: two processes never extract one target at once."""
    return locked(target_dir(ws, target).with_suffix(".lock"), f"target {target.id}", log)


def _download(ws: Workspace, target: Target, found: Found, log: Log) -> Path:
    """A package's .deb from the download cache, or else the archive; says which, and how
    big a download is."""
    index, package = found
    debs_dir = ws.cache / "debs"
    cached = cached_deb(package, debs_dir)
    log(f"{target.id}: {download_line(package, cached is not None)}")
    return cached or index.download(package, debs_dir, not sys.stderr.isatty())


def install(ws: Workspace, resolution: Resolution, log: Log) -> KernelTree:
    """Download and extract a resolved target into the cache, replacing an older one."""
    target = resolution.target
    return _install(
        ws,
        resolution,
        lambda: [_download(ws, target, found, log) for found in resolution.packages],
        log,
    )


def install_built(ws: Workspace, kernel: SourceKernel, log: Log) -> KernelTree:
    """Build a source target's kernel (or take the built one) and extract it with busybox."""
    target = kernel.target

    def debs() -> list[Path]:
        # Every download comes before the build, which another thread may overlap with
        # updates of the suite's index (commands._prepare).
        busybox = _download(ws, target, kernel.busybox, log)
        built = kernelbuild.built_debs(ws, kernel)
        if built is None:  # the source (133 MiB for 6.1) is fetched only to build
            source = _download(ws, target, kernel.source, log)
            built = kernelbuild.build(ws, kernel, source, os.cpu_count() or 1, log)
        return [*built, busybox]

    return _install(ws, kernel, debs, log)


def _install(
    ws: Workspace, planned: Planned, debs_of: Callable[[], list[Path]], log: Log
) -> KernelTree:
    """Extract a planned kernel's packages into the target's tree.

    Under the target's lock: a process that waited for another to install the same kernel
    takes its tree. The tree is extracted aside and renamed into place whole, and target.json,
    which says the tree is complete, is written last.
    """
    target = planned.target
    with _target_lock(ws, target, log):
        cached = load_tree(ws, target)
        if cached and planned.installed_as(cached):
            return cached
        debs = debs_of()
        tdir = target_dir(ws, target)
        final_root = tdir / "root"
        with _staging(tdir) as staging:
            log(f"{target.id}: extracting {len(debs)} packages")
            _extract(debs, staging)
            # Paths inside the tree must be the final ones: rewrite against root, then rename.
            _rewrite_headers_makefile(planned, staging, final_root)
            staged = KernelTree(
                target, staging, planned.release, planned.versions, planned.headers_rel
            )
            missing = staged.problems()
            if missing:
                raise SetupError(f"{target.id}: extracted tree lacks {', '.join(missing)}")
            record = tdir / "target.json"
            record.unlink(missing_ok=True)
            _put_in_place(staging, final_root)
        tree = KernelTree(
            target, final_root, planned.release, planned.versions, planned.headers_rel
        )
        _write_atomically(record, json.dumps(tree.to_json(), indent=2) + "\n")
        return tree


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def fetch(
    ws: Workspace,
    targets: list[Target],
    log: Log = _stderr_log,
    update: bool = True,
    view: AptView | None = None,
) -> FetchReport:
    """Resolve the newest kernel of each target and make sure it is in the cache.

    A target that fails is reported in the result; the others still complete. When the mirror
    cannot be reached, a target already in the cache is kept as it is. `view` is the archive
    to resolve and download from: the system mirror's (apt_view) unless one is given.
    """
    report = FetchReport()
    if view is None:
        view = apt_view(ws)
    index_errors = update_indexes(view, targets, log) if update else {}
    for target in targets:
        cached = load_tree(ws, target)
        broken = [
            f"{s}/{a}: {e}"
            for (s, a), e in index_errors.items()
            if a in (target.arch, architectures.host().debian_arch)
            and s in (*target.suites, target.base_suite)
        ]
        try:
            if broken and cached:
                log(f"{target.id}: kept cached {cached.release}; index not refreshed: {broken[0]}")
                report.trees.append(cached)
                continue
            index = view.index(target.suite, target.arch)
            if broken and (index is None or not index.has_index):
                raise SetupError(f"{target.id}: {broken[0]}")
            if target.from_source:
                kernel = kernelbuild.resolve(view, target)
                fresh = cached if kernel.installed_as(cached) else None
                report.trees.append(fresh or install_built(ws, kernel, log))
                continue
            options = candidates(view, target)
            newest_one = options[0]
            if cached and newest_one.installed_as(cached):
                report.trees.append(cached)
                continue
            if broken:
                log(f"{target.id}: warning: resolved without a fresh index: {broken[0]}")
            report.trees.append(_install_first(ws, options, log))
        except SetupError as exc:
            report.errors[target.id] = exc
    return report


def ensure(ws: Workspace, targets: list[Target], log: Log = _stderr_log) -> list[KernelTree]:
    """The trees of these targets, fetching only those not yet in the cache."""
    cached = {t.id: load_tree(ws, t) for t in targets}
    trees = {target_id: tree for target_id, tree in cached.items() if tree is not None}
    missing = [t for t in targets if t.id not in trees]
    if missing:
        report = fetch(ws, missing, log)
        if report.errors:
            first_id, error = next(iter(report.errors.items()))
            first = str(error)
            more = f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
            message = f"{first}{more}" if first.startswith(first_id) else first
            unavailable = all(isinstance(e, ArchiveUnavailable) for e in report.errors.values())
            raise (ArchiveUnavailable if unavailable else SetupError)(message)
        trees.update({tree.target.id: tree for tree in report.trees})
    return [trees[t.id] for t in targets]


def _install_first(ws: Workspace, options: list[Resolution], log: Log) -> KernelTree:
    """Install the newest kernel whose packages the mirror actually serves.

    A mirror mid-sync can list packages its pool does not have yet; an older ABI that downloads
    is better than no target, and the user is told which one was taken and why.
    """
    first_error = None
    for resolution in options:
        try:
            tree = install(ws, resolution, log)
        except SetupError as exc:
            first_error = first_error or exc
            log(f"{resolution.target.id}: {resolution.release} unavailable: {exc}")
            continue
        if resolution is not options[0]:
            log(
                f"{tree.target.id}: warning: took {tree.release}, not the newest "
                f"{options[0].release}, which the mirror does not serve"
            )
        log(f"{tree.target.id}: ready, kernel {tree.release}")
        return tree
    raise first_error or SetupError("no kernel to install: the archive offers none")


@dataclass(frozen=True)
class TargetStatus:
    target: Target
    cached: KernelTree | None
    available: Planned | None
    note: str = ""


def status(ws: Workspace, targets: list[Target]) -> list[TargetStatus]:
    """What is cached and what the last-fetched indexes offer, without touching the network."""
    view, view_error = None, ""
    try:
        view = apt_view(ws)
    except SetupError as exc:
        view_error = str(exc)
    rows = []
    for target in targets:
        cached = load_tree(ws, target)
        available, note = None, view_error
        if view is not None:
            try:
                available = (
                    kernelbuild.resolve(view, target)
                    if target.from_source
                    else resolve(view, target)
                )
            except SetupError as exc:
                note = "indexes not fetched yet" if not (ws.cache / "apt").exists() else str(exc)
        rows.append(TargetStatus(target, cached, available, note))
    return rows


def newer_abi(row: TargetStatus) -> str | None:
    """The newest release the archive offers when it differs from the cached one."""
    if row.cached is None or row.available is None:
        return None
    return row.available.release if row.available.release != row.cached.release else None


def newest_headers(ws: Workspace, target: Target, log: Log = _stderr_log) -> tuple[str, Path]:
    """The newest release the archive offers for a target and its headers tree, fetched without
    the image: just the flavour's headers package, extracted under `<cache>/newest/<id>/`. A
    kernel pvfront builds itself is its own newest.

    The indexes are refreshed first; when the mirror cannot be reached the last fetched ones
    answer, and the user is told.
    """
    if target.from_source:
        # No archive publishes its headers: the newest such kernel is the one built here.
        tree = ensure(ws, [target], log)[0]
        return tree.release, tree.headers_dir
    view = apt_view(ws)
    errors = update_indexes(view, [target], log)
    if errors:
        (suite, arch), error = next(iter(errors.items()))
        log(f"{target.id}: warning: {suite}/{arch} not refreshed ({error}); using the last index")
    resolution = resolve(view, target)
    name = f"linux-headers-{resolution.release}"
    found = next((i, p) for i, p in resolution.packages if p.name == name)
    dest = ws.cache / "newest" / target.id / resolution.release
    headers = dest / "usr" / "src" / name
    with _target_lock(ws, target, log):
        if not (headers / "Module.symvers").is_file():
            deb = _download(ws, target, found, log)
            with _staging(dest.parent) as staging:
                _extract([deb], staging)
                _put_in_place(staging, dest)
    return resolution.release, headers
