"""Build out-of-tree kernel modules with Kbuild against provisioned targets.

Each target builds in its suite's build root (`pvfront.buildroot`), with the headers and
compiler Debian ships for that kernel, into `build/<target>/`, which mirrors the module sources
as symlinks so the `.ko` files land directly there and the source directory stays clean.
Warnings are errors:
the compiler gets `-Werror` under `W=1`, and any diagnostic kbuild, modpost or sparse prints
fails the build. An unchanged rebuild is skipped by a stamp of everything that goes into it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pvfront.buildroot import BuildRoot
from pvfront.errors import UsageError
from pvfront.kerneltree import KernelTree
from pvfront.locks import locked

STAMP = ".pvfront-build-stamp"
# Files in a module source directory that take part in a build.
_SOURCE_SUFFIXES = (".c", ".h", ".S", ".mk")
_SOURCE_NAMES = ("Kbuild", "Makefile")
# A diagnostic from gcc, sparse, modpost or kbuild itself.
_DIAGNOSTIC = re.compile(
    r"(^[^\s:]+:\d+(:\d+)?: (warning|error)\b)|(^\s*(WARNING|ERROR): modpost:)|(\*\*\* )|"
    r"(^make(\[\d+\])?: \*\*\*)",
    re.M,
)


@dataclass(frozen=True)
class BuildOptions:
    sparse: bool = True  # C=1: run sparse on every file compiled
    jobs: int = 0  # parallel targets; 0 means one per core
    # -DPVF_TEST_HOOKS: the fault-injection parameters the QEMU tests drive (kmod/README.md);
    # never in a package
    test_hooks: bool = False


@dataclass
class BuildResult:
    target_id: str
    out_dir: Path
    log: Path
    ok: bool = False
    up_to_date: bool = False
    modules: list[Path] = field(default_factory=list)
    first_error: str = ""
    unavailable: str = ""  # why the archive cannot provide this target today

    @classmethod
    def unavailable_today(cls, target_id: str, out_dir: Path, reason: str) -> BuildResult:
        return cls(target_id, out_dir, out_dir, unavailable=reason)

    def summary(self) -> str:
        if self.unavailable:
            return f"{self.target_id}: unavailable today: {self.unavailable}"
        if not self.ok:
            return f"{self.target_id}: FAILED: {self.first_error} (log: {self.log})"
        state = "up to date" if self.up_to_date else "built"
        names = " ".join(m.name for m in self.modules)
        return f"{self.target_id}: {state}: {names}"


def _sources(source_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in source_dir.iterdir()
        if p.is_file() and (p.suffix in _SOURCE_SUFFIXES or p.name in _SOURCE_NAMES)
    )


def make_command(tree: KernelTree, out_dir: Path, options: BuildOptions, jobs: int) -> list[str]:
    """Kbuild in the build root; the headers' own .kernelvariables name the compiler."""
    command = [
        "make",
        f"-j{jobs}",
        "-C",
        f"/{tree.headers_rel}",
        f"M={out_dir}",
        f"ARCH={tree.target.architecture.kbuild_arch}",
        "W=1",
        "KCFLAGS=-Werror -DPVF_TEST_HOOKS" if options.test_hooks else "KCFLAGS=-Werror",
        "modules",
    ]
    if options.sparse:
        command.insert(-1, "C=1")
    return command


def _stamp(
    tree: KernelTree, sources: list[Path], generated: dict[str, str], command: list[str]
) -> str:
    digest = hashlib.sha256()
    digest.update(repr((tree.release, sorted(tree.packages.items()), command)).encode())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name, text in sorted(generated.items()):
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def _prepare_out_dir(sources: list[Path], generated: dict[str, str], out_dir: Path) -> None:
    """Make out_dir hold a symlink per source file and the generated files, nothing stale."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p.resolve() for p in sources if p.name not in generated}
    for entry in out_dir.iterdir():
        if entry.is_symlink() and (
            entry.name not in wanted or entry.resolve() != wanted[entry.name]
        ):
            entry.unlink()
    for name, target in wanted.items():
        link = out_dir / name
        if not link.is_symlink():
            if link.exists():
                link.unlink()
            link.symlink_to(target)
    for name, text in generated.items():
        path = out_dir / name
        if not path.is_file() or path.is_symlink() or path.read_text() != text:
            path.unlink(missing_ok=True)
            path.write_text(text)


def first_error(log_text: str) -> str:
    match = _DIAGNOSTIC.search(log_text)
    if not match:
        return "make failed (no diagnostic found)"
    line_start = log_text.rfind("\n", 0, match.start()) + 1
    line_end = log_text.find("\n", match.start())
    return log_text[line_start : line_end if line_end >= 0 else None].strip()


def _expected_modules(kbuild: str) -> list[str]:
    """Module names a Kbuild file declares with obj-m."""
    names: list[str] = []
    for line in kbuild.splitlines():
        match = re.match(r"\s*obj-m\s*[+:]?=\s*(.*)", line)
        if match:
            names += [o[:-2] for o in match.group(1).split() if o.endswith(".o")]
    return names


def build_one(
    tree: KernelTree,
    root: BuildRoot,
    source_dir: Path,
    out_dir: Path,
    log_dir: Path,
    options: BuildOptions,
    jobs: int = 1,
    generated: dict[str, str] | None = None,
) -> BuildResult:
    """Build the modules of source_dir for one target in its build root; never raises for a
    compile failure.

    `generated` maps file names to contents written into the build directory beside the
    sources (a generated Kbuild replaces the source directory's).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # Two processes (pytest workers, a developer's second shell) must not run make in one
    # directory at once; the second waits, then finds the build up to date.
    with (
        locked(out_dir / ".pvfront-build-lock", f"build directory {out_dir}", _say),
        root.in_use(_say),
    ):
        return _build_locked(
            tree, root, source_dir, out_dir, log_dir, options, jobs, generated or {}
        )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build_locked(
    tree: KernelTree,
    root: BuildRoot,
    source_dir: Path,
    out_dir: Path,
    log_dir: Path,
    options: BuildOptions,
    jobs: int,
    generated: dict[str, str],
) -> BuildResult:
    log_dir.mkdir(parents=True, exist_ok=True)
    variant = "-test-hooks" if options.test_hooks else ""
    result = BuildResult(tree.target.id, out_dir, log_dir / f"build-{tree.target.id}{variant}.log")
    sources = _sources(source_dir)
    kbuild = generated.get("Kbuild")
    if kbuild is None:
        kbuild = (source_dir / "Kbuild").read_text() if (source_dir / "Kbuild").is_file() else ""
    expected = _expected_modules(kbuild)
    if not expected:
        result.first_error = f"{source_dir}: the Kbuild file declares no obj-m modules"
        return result
    out_dir = out_dir.resolve()
    command = root.command(
        make_command(tree, out_dir, options, jobs), binds=[out_dir, source_dir.resolve()]
    )
    stamp = _stamp(tree, sources, generated, command)
    kos = [out_dir / f"{name}.ko" for name in expected]
    stamp_file = out_dir / STAMP
    if stamp_file.exists() and stamp_file.read_text() == stamp and all(k.exists() for k in kos):
        result.ok = result.up_to_date = True
        result.modules = kos
        return result
    _prepare_out_dir(sources, generated, out_dir)
    stamp_file.unlink(missing_ok=True)
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(
        command, cwd=out_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    result.log.write_text(" ".join(command) + "\n\n" + proc.stdout)
    # modpost's and make's messages name paths inside the root; the build directory is the
    # same path on both sides.
    diagnostics = _DIAGNOSTIC.search(proc.stdout)
    missing = [k.name for k in kos if not k.exists()]
    if proc.returncode != 0 or diagnostics or missing:
        result.first_error = (
            first_error(proc.stdout)
            if (proc.returncode or diagnostics)
            else f"no {', '.join(missing)} after make"
        )
        return result
    stamp_file.write_text(stamp)
    result.ok = True
    result.modules = kos
    return result


def starting_line(target_id: str, number: int, total: int) -> str:
    """What a build says as it starts the number-th of total targets."""
    return f"building {target_id} ({number}/{total})"


def finished_line(result: BuildResult, seconds: float) -> str:
    """What a build says when a target is done, after how many seconds."""
    if result.up_to_date:
        return f"{result.target_id} was up to date"
    verb = "built" if result.ok else "failed to build"
    return f"{verb} {result.target_id} in {seconds:.0f} s"


def build_modules(
    trees: list[KernelTree],
    roots: list[BuildRoot],
    source_dir: Path,
    out_root: Path,
    log_dir: Path,
    options: BuildOptions = BuildOptions(),
    on_result: Callable[[BuildResult], None] | None = None,
    generate: Callable[[KernelTree], dict[str, str]] | None = None,
    progress: Callable[[str], None] = _say,
) -> list[BuildResult]:
    """Build for every tree, targets in parallel up to the core count; results in tree order.

    `generate`, if given, returns the generated files for a tree's build directory;
    `on_result` hears of each result as it comes; `progress` hears a line as each target
    starts and one as it ends.
    """
    if generate is None and not (source_dir / "Kbuild").is_file():
        raise UsageError(f"{source_dir}: no Kbuild file: not a module source directory")
    cores = os.cpu_count() or 1
    workers = max(1, min(len(trees), options.jobs or cores))
    make_jobs = max(1, cores // workers)
    numbers = itertools.count(1)  # in the order the targets start

    def one(tree: KernelTree, root: BuildRoot) -> BuildResult:
        progress(starting_line(tree.target.id, next(numbers), len(trees)))
        started = time.monotonic()
        result = build_one(
            tree,
            root,
            source_dir,
            out_root / tree.target.id,
            log_dir,
            options,
            make_jobs,
            generate(tree) if generate else None,
        )
        progress(finished_line(result, time.monotonic() - started))
        if on_result:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, trees, roots))
