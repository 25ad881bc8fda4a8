"""Build roots: a Debian system of the target's own suite in which its modules are compiled.

A module must be built with the compiler its kernel was built with, the way DKMS builds it on
an installed system. A build root is such a system, made with `mmdebstrap` from the suite's
archive (one per suite and architecture: bookworm's also serves bookworm-backports), with the
target's `linux-headers` installed in it by apt from the very packages the target was
provisioned from, so the headers, `linux-kbuild` and compiler are exactly what Debian ships.
Builds run in it with `chroot`, in a private mount namespace that binds the build and source
directories at their own paths, so nothing stays mounted when the build ends.

Roots live under `<cache>/buildroots/<suite>_<arch>/`. A root is made again when its recipe
changes; the headers of a new kernel ABI are added to it with apt (which also upgrades what
they need), so an archive that moves refreshes the root without a rebuild. Every change takes
the root's lock exclusively; builds take it shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvfront import architectures
from pvfront.apt import KEYRING, system_mirror
from pvfront.debversion import compare
from pvfront.errors import ArchiveUnavailable, SetupError
from pvfront.kerneltree import KernelTree
from pvfront.locks import locked
from pvfront.targets import Target, load_targets
from pvfront.workspace import Workspace

Log = Callable[[str], None]

# What every root holds besides the headers: Kbuild's needs (make, perl for W=1's kernel-doc),
# sparse for C=1, pahole for BTF of 6.12+ modules, kmod for modinfo.
BASE_PACKAGES = ("make", "perl", "sparse", "dwarves", "kmod", "ca-certificates")
# Changing what a root is made of changes this, and every root is made anew.
RECIPE = "1"
MMDEBSTRAP_HOOKS = Path("/usr/share/mmdebstrap/hooks/file-mirror-automount")
_DEBS_IN_ROOT = Path("var/cache/pvfront/debs")
# apt's own words for an archive that cannot satisfy a request today.
_RESOLVER_FAILURE = re.compile(
    r"(unmet dependencies|Unable to correct problems|has no installation candidate|"
    r"Unable to locate package|but it is not (going to be )?installable|but it is not "
    r"installable|Depends: .* but)",
)


@dataclass(frozen=True)
class RootSpec:
    """Which Debian system a target builds in."""

    suite: str  # the base release: bookworm for bookworm-backports
    arch: str
    sources: tuple[str, ...]  # the suites enabled in the root's apt
    unstable: bool

    @property
    def name(self) -> str:
        return f"{self.suite}_{self.arch}"


def spec_for(target: Target, declared: Sequence[Target]) -> RootSpec:
    """The root of a target's release and architecture, with the suites of every declared
    target that shares it (bookworm's root also enables bookworm-backports), so all of
    them agree on one root."""
    base = target.base_suite
    sharing = [t for t in declared if t.base_suite == base and t.arch == target.arch]
    sources = [base]
    for other in sharing or [target]:
        sources += other.suites
        if not other.unstable:
            sources.append(f"{base}-security")
    return RootSpec(base, target.arch, tuple(dict.fromkeys(sources)), target.unstable)


def _root_dir(ws: Workspace, spec: RootSpec) -> Path:
    return ws.cache / "buildroots" / spec.name


# The system's apt settings that decide whether and how its mirror can be reached; a root
# must reach the mirror the way the system does (a proxy, a snapshot mirror whose Release
# files are past their Valid-Until).
_PASSED_APT_OPTIONS = (
    "Acquire::Check-Valid-Until",
    "Acquire::http::Proxy",
    "Acquire::https::Proxy",
)


def system_apt_options() -> list[str]:
    """`name=value` for each of _PASSED_APT_OPTIONS the system's apt configuration sets."""
    try:
        dump = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    options = []
    for line in dump.splitlines():
        match = re.match(r'^(\S+) "(.*)";$', line)
        if match and match.group(1) in _PASSED_APT_OPTIONS:
            options.append(f"{match.group(1)}={match.group(2)}")
    return options


def _apt_conf(option: str) -> str:
    """`Name=value` (apt's -o form) as an apt.conf line, the form mmdebstrap's --aptopt takes."""
    name, value = option.split("=", 1)
    return f'{name} "{value}";'


def sources_lines(suites: Sequence[str]) -> list[str]:
    mirror = system_mirror()
    lines = []
    for suite in suites:
        site = mirror.site_for(suite)
        if site:
            lines.append(f"deb [signed-by={KEYRING}] {site} {suite} main")
    return lines


def _header_debs(tree: KernelTree, debs_dir: Path) -> list[Path]:
    """The target's own headers packages (of its architecture), as downloaded for the tree."""
    wanted = []
    for name, version in tree.packages.items():
        if ":" in name or not name.startswith(("linux-headers-", "linux-kbuild-", "linux-base-")):
            continue
        # The tree's kbuild is the host's, which fits a root of the host's architecture only;
        # another root's apt brings that root's own from its archive.
        host = architectures.host().debian_arch
        if name.startswith("linux-kbuild-") and tree.target.arch != host:
            continue
        found = sorted(debs_dir.glob(f"{name}_{_epochless(version)}_*.deb"))
        if not found:
            raise SetupError(
                f"{tree.target.id}: {debs_dir}: no {name} {version} .deb "
                f"(run: pvfront targets fetch --target {tree.target.id})"
            )
        wanted.append(found[0])
    return wanted


def _epochless(version: str) -> str:
    return version.split(":", 1)[-1]


def _failure(spec: RootSpec, subject: str, output: str, step: str) -> SetupError:
    """apt's first error line as a one-line error naming the subject; unavailable when the
    archive's resolver refused and the suite is allowed to be broken."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "W: Failed"))]
    resolver = [line for line in lines if _RESOLVER_FAILURE.search(line)]
    reason = (resolver or errors or lines[-1:] or ["no output"])[0]
    reason = re.sub(r"^E:\s*", "", reason)
    message = f"{subject}: {step} failed: {reason}"
    if spec.unstable and resolver:
        return ArchiveUnavailable(f"{message} (the archive cannot provide it today)")
    return SetupError(message)


def run_step(
    command: Sequence[str], spec: RootSpec, step: str, log: Log, subject: str | None = None
) -> None:
    """Run one step of making a Debian system; apt's reason, one line, if it fails."""
    subject = subject or f"build root {spec.suite}/{spec.arch}"
    started = time.monotonic()
    proc = subprocess.run(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C"),
    )
    if proc.returncode != 0:
        raise _failure(spec, subject, proc.stdout, step)
    log(f"{subject}: {step} ({time.monotonic() - started:.0f} s)")


# apt's words for a mirror caught mid-sync: its index files disagree with its Release file
# for a few minutes, and a later try gets a consistent set (seen for bookworm-security i386).
# A mirror that fails twice with the same words (the same file and sizes) is stuck rather
# than syncing (seen too, for hours): no further try.
_MIRROR_SYNC = re.compile(r"Mirror sync in progress|Hash Sum mismatch|File has unexpected size")
# How long to wait before each further try of a step the mirror's sync broke.
SYNC_RETRY_DELAYS = (30.0, 90.0)


def _create(ws: Workspace, spec: RootSpec, debs: list[Path], log: Log) -> None:
    final = _root_dir(ws, spec)
    shutil.rmtree(final, ignore_errors=True)
    log(
        f"build root {spec.suite}/{spec.arch}: making it with mmdebstrap "
        f"(about a minute, downloads the suite's compiler)"
    )
    try:
        _mmdebstrap(spec, spec.sources, debs, final, log)
    except SetupError as exc:
        # A mirror's security pool can list what it does not serve (seen for bullseye i386),
        # or stay mid-sync past the retries: the release alone still has the compiler and
        # kbuild the headers need.
        plain = tuple(s for s in spec.sources if not s.endswith("-security"))
        unusable = "404" in str(exc) or _MIRROR_SYNC.search(str(exc))
        if not unusable or plain == spec.sources:
            raise
        log(
            f"build root {spec.suite}/{spec.arch}: warning: the security archive cannot be "
            f"used now ({exc}); making the root from {', '.join(plain)} alone"
        )
        _mmdebstrap(spec, plain, debs, final, log)


def _mmdebstrap(
    spec: RootSpec, suites: tuple[str, ...], debs: list[Path], final: Path, log: Log
) -> None:
    staging = final.with_name(final.name + ".new")
    command = mmdebstrap_command(
        spec.suite, spec.arch, suites, [*BASE_PACKAGES, *map(str, debs)], staging
    )
    previous = ""
    for delay in (*SYNC_RETRY_DELAYS, None):
        shutil.rmtree(staging, ignore_errors=True)
        try:
            run_step(command, spec, "mmdebstrap", log)
            break
        except SetupError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if delay is None or not _MIRROR_SYNC.search(str(exc)) or str(exc) == previous:
                raise
            previous = str(exc)
            log(
                f"build root {spec.suite}/{spec.arch}: the mirror is mid-sync ({exc}); "
                f"trying again in {delay:.0f} s"
            )
            time.sleep(delay)
    os.replace(staging, final)


def mmdebstrap_command(
    suite: str,
    arch: str,
    suites: Sequence[str],
    include: Sequence[str],
    dest: Path,
    hooks: Sequence[str] = (),
) -> list[str]:
    """mmdebstrap making a `--variant=apt` system of suite in dest, from the system's mirror.

    include: package names or local .deb files, installed by apt; hooks: further mmdebstrap
    options (`--customize-hook=...`). It runs in a private mount namespace, so mounts its
    hooks leave behind when it fails end with it and removing dest never reaches into a
    bind-mounted path.
    """
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        f"--architectures={arch}",
        *[
            f"--aptopt={_apt_conf(option)}"
            for option in (
                "Acquire::Retries=3",
                "APT::Install-Recommends=false",
                *system_apt_options(),
            )
        ],
        *[f"--include={package}" for package in include],
        f"--hook-dir={MMDEBSTRAP_HOOKS}",
        *hooks,
        suite,
        str(dest),
        *sources_lines(suites),
    ]


def _record_path(ws: Workspace, spec: RootSpec) -> Path:
    return _root_dir(ws, spec).with_suffix(".json")


def _read_record(ws: Workspace, spec: RootSpec) -> dict:
    try:
        data = json.loads(_record_path(ws, spec).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("recipe") == _recipe_key(spec) else {}


def _recipe_key(spec: RootSpec) -> str:
    text = repr((RECIPE, BASE_PACKAGES, spec.sources, sources_lines(spec.sources)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _not_older_than_installed(root: Path, debs: list[Path]) -> list[Path]:
    """Leave out packages the root has at this version or newer.

    The ABIs of one line share one `linux-kbuild-<line>` (bookworm's 6.1, bullseye's 5.10):
    the older ABI's headers accept the newer kbuild, and installing the older one would
    downgrade it under the newer headers, which apt rightly refuses.
    """
    proc = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f=${Package} ${Version} ${db:Status-Status}\n",
        ],
        capture_output=True,
        text=True,
    )
    installed = {
        name: version
        for name, version, state in (
            line.split() for line in proc.stdout.splitlines() if len(line.split()) == 3
        )
        if state == "installed"
    }
    kept = []
    for deb in debs:
        fields = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package", "Version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        have = installed.get(info["Package"])
        if have is None or compare(have, info["Version"]) < 0:
            kept.append(deb)
    return kept


def _install_headers(ws: Workspace, spec: RootSpec, debs: list[Path], log: Log) -> None:
    """Add packages to an existing root with its own apt, from files copied into it."""
    root = _root_dir(ws, spec)
    debs = _not_older_than_installed(root, debs)
    inside = root / _DEBS_IN_ROOT
    shutil.rmtree(inside, ignore_errors=True)
    inside.mkdir(parents=True)
    for deb in debs:
        shutil.copyfile(deb, inside / deb.name)
    try:
        _apt_install(
            root,
            spec,
            [f"/{_DEBS_IN_ROOT}/{d.name}" for d in debs],
            " ".join(d.name.split("_")[0] for d in debs),
            log,
        )
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def _apt_install(root: Path, spec: RootSpec, wanted: list[str], what: str, log: Log) -> None:
    """apt-get update, then install wanted (names or files inside the root), in the root."""
    apt = ["-o", "APT::Install-Recommends=false", "-o", "Acquire::Retries=3"]
    for option in system_apt_options():
        apt += ["-o", option]
    try:
        run_step(chroot_command(root, ["apt-get", *apt, "update"]), spec, "apt-get update", log)
    except SetupError as exc:
        # A mirror mid-sync (or stuck) spoils one index; apt keeps that index's last good
        # copy and every other index is fresh: what the install needs is likely there.
        if not _MIRROR_SYNC.search(str(exc)):
            raise
        log(f"build root {spec.suite}/{spec.arch}: warning: {exc}; installing from the rest")
    run_step(
        chroot_command(root, ["apt-get", *apt, "install", "-y", *wanted]),
        spec,
        f"apt-get install {what}",
        log,
    )


def chroot_command(root: Path, argv: Sequence[str], binds: Sequence[Path] = ()) -> list[str]:
    """argv run in root, in a private mount namespace with /proc, /dev and binds mounted."""
    script = ['mount -t proc proc "$R/proc"', 'mount --rbind /dev "$R/dev"']
    for i, _ in enumerate(binds):
        script.append(f'mkdir -p "$R$B{i}" && mount --bind "$B{i}" "$R$B{i}"')
    script.append('shift; exec chroot "$R" "$@"')
    env = [f"R={root}", *[f"B{i}={path}" for i, path in enumerate(binds)]]
    return [
        "env",
        *env,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        "; ".join(script),
        "sh",
        "--",
        *argv,
    ]


@dataclass(frozen=True)
class BuildRoot:
    """A ready build root for one target: run commands in it."""

    spec: RootSpec
    path: Path
    lock: Path

    def command(self, argv: Sequence[str], binds: Sequence[Path]) -> list[str]:
        return chroot_command(self.path, argv, binds)

    @contextlib.contextmanager
    def in_use(self, log: Log) -> Iterator[None]:
        with locked(self.lock, f"build root {self.spec.name}", log, shared=True):
            yield


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure(ws: Workspace, tree: KernelTree, log: Log = stderr_log) -> BuildRoot:
    """The build root for a provisioned target, made or extended first when it must be."""
    spec = spec_for(tree.target, load_targets(ws.targets_file).targets)
    root = _root_dir(ws, spec)
    lock = root.with_suffix(".lock")
    headers = f"linux-headers-{tree.release}"
    version = tree.packages.get(headers, "")
    record = _read_record(ws, spec)
    if record.get("headers", {}).get(headers) == version and root.is_dir():
        return BuildRoot(spec, root, lock)
    with locked(lock, f"build root {spec.name}", log):
        record = _read_record(ws, spec) if root.is_dir() else {}
        installed = dict(record.get("headers", {}))
        if installed.get(headers) != version:
            debs = _header_debs(tree, ws.cache / "debs")
            if record:
                _install_headers(ws, spec, debs, log)
            else:
                _create(ws, spec, debs, log)
                record = {"recipe": _recipe_key(spec)}
            installed[headers] = version
            _write_record(ws, spec, {**record, "headers": installed})
    return BuildRoot(spec, root, lock)


def ensure_packages(
    ws: Workspace, target: Target, names: Sequence[str], log: Log = stderr_log
) -> BuildRoot:
    """The build root of a target's suite with these packages installed from its archive by
    name: a kernel built from source needs its compiler before any headers package exists."""
    spec = spec_for(target, load_targets(ws.targets_file).targets)
    root = _root_dir(ws, spec)
    lock = root.with_suffix(".lock")
    with locked(lock, f"build root {spec.name}", log):
        record = _read_record(ws, spec) if root.is_dir() else {}
        have = set(record.get("packages", []))
        missing = [name for name in names if name not in have]
        if missing:
            if not record:
                _create(ws, spec, [], log)
                record = {"recipe": _recipe_key(spec)}
            _apt_install(root, spec, missing, " ".join(missing), log)
            _write_record(ws, spec, {**record, "packages": sorted(have | set(missing))})
    return BuildRoot(spec, root, lock)


def _write_record(ws: Workspace, spec: RootSpec, record: dict) -> None:
    _record_path(ws, spec).write_text(json.dumps(record, indent=2) + "\n")
