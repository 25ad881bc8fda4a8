"""The user-facing operations, shared by the `pvfront` CLI and the invoke tasks.

Each takes plain values, prints what a user wants to see, and returns an exit code; a user
mistake raises a PvfrontError, which both shells turn into one line and that code.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pvfront import (
    aptrepo,
    buildroot,
    cimatrix,
    guest,
    hosttools,
    image,
    kcidb,
    lava,
    metadata,
    provision,
    sourcepackage,
    symcheck_report,
)
from pvfront import package as packaging
from pvfront.build import BuildOptions, BuildResult, build_modules
from pvfront.elf import read_all
from pvfront.errors import (
    EXIT_FAILED,
    EXIT_KERNEL,
    EXIT_OK,
    EXIT_SETUP,
    ArchiveUnavailable,
    FailedError,
    UsageError,
)
from pvfront.kerneltree import KernelTree
from pvfront.metadata import Family
from pvfront.package import Signing
from pvfront.symcheck import Report, check_modules
from pvfront.symvers import Kernel, kernel_for_tree, kernel_from_path, module_files
from pvfront.targets import Target, load_targets
from pvfront.workspace import Workspace


def _say(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def select(ws: Workspace, target_id: str | None, all_targets: bool) -> list[Target]:
    return load_targets(ws.targets_file).select(target_id, all_targets=all_targets)


def setup(install: bool = True) -> int:
    installed = hosttools.ensure_host_tools(install=install)
    _say(f"installed: {' '.join(installed)}" if installed else "host tools: all present")
    return EXIT_OK


def targets_fetch(ws: Workspace, target_id: str | None, all_targets: bool) -> int:
    targets = select(ws, target_id, all_targets)
    report = provision.fetch(ws, targets, log=_warn)
    for tree in report.trees:
        _say(f"{tree.target.id}: {tree.release} in {tree.root}")
    failed = False
    for target_id_, error in report.errors.items():
        text = str(error) if str(error).startswith(target_id_) else f"{target_id_}: {error}"
        if isinstance(error, ArchiveUnavailable):
            _warn(f"pvfront: warning: unavailable today: {text}")
        else:
            failed = True
            _warn(f"pvfront: error: {text}")
    return EXIT_SETUP if failed else EXIT_OK


def targets_list(ws: Workspace) -> int:
    rows = provision.status(ws, list(load_targets(ws.targets_file).targets))
    header = ("TARGET", "SUITE", "ARCH", "FLAVOUR", "CACHED", "NEWEST", "PACKAGES", "ABI")
    table = [header]
    for row in rows:
        cached = row.cached.release if row.cached else "-"
        newest = row.available.release if row.available else (row.note or "-")
        versions = (
            row.cached.packages if row.cached else (row.available.versions if row.available else {})
        )
        kernel_version = next((v for n, v in versions.items() if n.startswith("linux-image-")), "-")
        newer = provision.newer_abi(row)
        abi = f"newer: {newer}" if newer else ("current" if row.cached and row.available else "-")
        table.append(
            (
                row.target.id,
                row.target.suite,
                row.target.arch,
                row.target.flavour,
                cached,
                newest,
                kernel_version,
                abi,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        _say("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


def build(
    ws: Workspace,
    target_id: str | None = None,
    all_targets: bool = False,
    sparse: bool = True,
    test_hooks: bool = False,
) -> list[BuildResult]:
    """Build kmod/ for the selected targets, fetching any target not yet in the cache.

    With test_hooks the modules carry the fault-injection parameters the QEMU tests drive and
    go to build/test-hooks/<target>/; what is packaged never has them.
    """
    declaration = ws.kmod_dir / "modules.toml"
    # A mistake in the declaration is the user's to fix before anything is fetched or built.
    family = metadata.load_family(declaration) if declaration.exists() else None
    hosttools.ensure_host_tools()
    trees, roots, unavailable = [], [], []
    for target, prepared in _prepare(ws, select(ws, target_id, all_targets)):
        if isinstance(prepared, ArchiveUnavailable):
            _warn(f"pvfront: warning: unavailable today: {prepared}")
            unavailable.append(
                BuildResult.unavailable_today(
                    target.id, ws.target_build_dir(target.id), str(prepared)
                )
            )
        else:
            trees.append(prepared[0])
            roots.append(prepared[1])
    generate = None
    if family is not None:
        declared = family

        def generate(tree: KernelTree) -> dict[str, str]:
            build_for = f"{tree.target.id} test-hooks" if test_hooks else tree.target.id
            return metadata.build_files(declared, build_for, "$(src)", "$(src)")

    results = build_modules(
        trees,
        roots,
        ws.kmod_dir,
        ws.test_hooks_build_dir if test_hooks else ws.build_dir,
        ws.log_dir,
        BuildOptions(sparse=sparse, test_hooks=test_hooks),
        on_result=lambda result: _say(result.summary()),
        generate=generate,
        progress=_warn,
    )
    return results + unavailable


Prepared = tuple[KernelTree, buildroot.BuildRoot] | ArchiveUnavailable


def _prepare_one(ws: Workspace, target: Target) -> Prepared:
    """A target's kernel tree and build root, fetched or made first where they must be."""
    try:
        tree = provision.ensure(ws, [target], log=_warn)[0]
        return tree, buildroot.ensure(ws, tree, log=_warn)
    except ArchiveUnavailable as exc:
        return exc


def _prepare(ws: Workspace, targets: list[Target]) -> list[tuple[Target, Prepared]]:
    """Each target with what _prepare_one gives, in the order given.

    A kernel pvfront builds from source (minutes of CPU) is built in a thread while the other
    targets are fetched (mostly waiting on the network). Those that share its build root (its
    suite and architecture) come last: the build holds the root, and their header installs
    wait for it.
    """
    building = [t for t in targets if t.from_source and provision.load_tree(ws, t) is None]
    if not building or len(targets) == 1:
        return [(t, _prepare_one(ws, t)) for t in targets]
    busy_roots = {(t.base_suite, t.arch) for t in building}
    others = [t for t in targets if t not in building]
    # stable: the declared order otherwise
    others.sort(key=lambda t: (t.base_suite, t.arch) in busy_roots)
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {t.id: pool.submit(_prepare_one, ws, t) for t in building}
        done = {t.id: _prepare_one(ws, t) for t in others}
        done.update({target_id: future.result() for target_id, future in futures.items()})
    return [(t, done[t.id]) for t in targets]


def boot(
    ws: Workspace,
    target_id: str | None,
    *,
    load: bool = False,
    disks: int = 0,
    net: bool = False,
    in_tree_modules: tuple[str, ...] = (),
    use_image: bool = False,
) -> int:
    """An interactive guest shell: the tests' busybox machine with the target's modules,
    built first, or (use_image) an overlay of the target's Debian image."""
    if disks < 0:
        raise UsageError("--blk takes a number of disks, 0 or more")
    tree = provision.ensure(ws, select(ws, target_id, False), log=_warn)[0]
    if use_image:
        guest_image = image.ensure(ws, tree, log=_warn)
        overlay = guest_image.overlay(ws.build_dir / "images" / tree.target.id, "boot.qcow2")
        return guest.interactive_image(ws, tree, overlay, disks=disks, net=net)
    [result] = build(ws, tree.target.id)
    if not result.ok:
        return EXIT_FAILED
    return guest.interactive(
        ws,
        tree,
        modules=result.modules,
        load=load,
        disks=disks,
        net=net,
        in_tree_modules=in_tree_modules,
    )


def images(ws: Workspace, target_id: str | None, all_targets: bool) -> int:
    """Make (or find cached) the Debian guest image of each target; say where and how big."""
    code = EXIT_OK
    for target in select(ws, target_id, all_targets):
        try:
            [tree] = provision.ensure(ws, [target], log=_warn)
            made = image.ensure(ws, tree, log=_warn)
        except ArchiveUnavailable as exc:
            _warn(f"{target.id}: unavailable today: {exc}")
            continue
        _say(
            f"{target.id}: {made.path} ({made.release}; {made.size_bytes / 2**20:.0f} MiB "
            f"on disk, made in {made.build_seconds:.0f} s)"
        )
    return code


def build_exit_code(results: list[BuildResult]) -> int:
    """Failed when any target that the archive can provide failed to build."""
    return EXIT_OK if all(r.ok or r.unavailable for r in results) else EXIT_FAILED


def pytest(ws: Workspace, argv: list[str]) -> int:
    """Run the test suites in a child pytest so its exit code (0/1/2/3) is ours."""
    proc = subprocess.run([sys.executable, "-m", "pytest", *argv], cwd=ws.root)
    return proc.returncode


_GRAVITY = {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_SETUP: 2, EXIT_KERNEL: 3}


def _selects_tests(ws: Workspace, argv: list[str]) -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *argv],
        cwd=ws.root,
        capture_output=True,
        text=True,
    )
    return proc.returncode == EXIT_OK


def pytest_in_turns(ws: Workspace, runs: list[list[str]]) -> int:
    """Several pytest runs one after the other, the gravest code of them; a run whose
    selection is empty is left out (if all are, pytest's own run says so)."""
    chosen = [argv for argv in runs if _selects_tests(ws, argv)] or runs[:1]
    codes = [pytest(ws, argv) for argv in chosen]
    return max(codes, key=lambda code: _GRAVITY.get(code, 1))


def _family(ws: Workspace) -> Family:
    return metadata.load_family(ws.kmod_dir / "modules.toml")


def package(
    ws: Workspace,
    target_id: str | None = None,
    all_targets: bool = False,
    *,
    signing: Signing | None = None,
    exclusive: bool = False,
    repo_key: str | None = None,
) -> int:
    """Build, gate on the symbol checks, stage and package each target; then the DKMS source
    tarball, the source package built in the first packaged target's suite (pvfront-dkms), and
    an apt repository of them all (signed with repo_key, a GnuPG key)."""
    results = build(ws, target_id, all_targets)
    if build_exit_code(results) != EXIT_OK:
        return EXIT_FAILED
    family = _family(ws)
    targets = {t.id: t for t in select(ws, target_id, all_targets)}
    out_dir = ws.build_dir / "packages"
    refused = 0
    staged = None
    for built in results:
        if built.unavailable:
            continue
        tree = provision.ensure(ws, [targets[built.target_id]], log=_warn)[0]
        result = packaging.package_target(
            ws,
            tree,
            family,
            built.modules,
            built.out_dir,
            out_dir,
            signing=signing,
            exclusive=exclusive,
        )
        if result.refused:
            refused += 1
            _warn(f"{tree.target.id}: refused: {len(result.refused)} module(s) would not load")
            for reason in result.refused:
                _warn(f"  {reason}")
            continue
        assert result.staged is not None
        staged = staged or result.staged
        _say(f"{tree.target.id}: {result.deb} (load order: {' '.join(result.staged.load_order())})")
    if signing is None:
        _warn(
            "note: modules are unsigned; Secure Boot guests (lockdown) will refuse them. "
            "Sign with --sign-key/--sign-cert."
        )
    _say(f"dkms source: {packaging.build_dkms_source(family, out_dir)}")
    if staged is not None:  # its load configuration is every kernel's
        built_source = sourcepackage.build(ws, staged.tree.target, family, staged, out_dir)
        _say(f"source package: {built_source.dsc} (built in {staged.tree.target.base_suite})")
        for deb in built_source.debs:
            _say(f"dkms package: {deb}")
    epoch = packaging.source_date_epoch(family)
    repository = aptrepo.write_repository(out_dir, epoch)
    if repo_key is not None:
        repository = aptrepo.sign(repository, repo_key, epoch)
    _say(
        f"apt repository: {repository.release.parent} (serve it over HTTP, then on the "
        f"machine: {repository.sources_line('http://HOST/PATH')})"
    )
    if repository.sources:
        _say(f"its source packages: {repository.sources_line('http://HOST/PATH', kind='deb-src')}")
    if repository.keyring is not None:
        _say(f"its key: {repository.keyring} (copy it to /etc/apt/keyrings/ on the machine)")
    return EXIT_FAILED if refused else EXIT_OK


def _symcache(ws: Workspace) -> Path:
    return ws.cache / "symcache"


def _target_kernel(ws: Workspace, target: Target) -> Kernel:
    tree = provision.ensure(ws, [target], log=_warn)[0]
    return kernel_for_tree(tree)


def _built_modules(ws: Workspace, target_id: str) -> list[Path]:
    return sorted(ws.target_build_dir(target_id).glob("*.ko"))


def _required_build(ws: Workspace, target_id: str) -> list[Path]:
    """build/<target>/*.ko, or a one-line error saying how to make them."""
    files = _built_modules(ws, target_id)
    if not files:
        raise UsageError(
            f"{ws.target_build_dir(target_id)}: no modules built for "
            f"{target_id} (run: pvfront build --target {target_id})"
        )
    return files


def symcheck_own_builds(ws: Workspace, target_id: str | None, all_targets: bool) -> list[Report]:
    """Each selected target's build checked against that target's kernel."""
    reports = []
    for target in select(ws, target_id, all_targets):
        files = _required_build(ws, target.id)
        reports.append(check_modules(read_all(files), _target_kernel(ws, target)))
    return reports


def symcheck_against_newest(
    ws: Workspace, target_id: str | None, all_targets: bool
) -> list[Report]:
    """Each selected target's build (made for its cached ABI) checked against the newest
    kernel of its flavour in the archive: does the package need a rebuild? Nothing is built
    or booted; only the newest headers package is fetched."""
    reports = []
    for target in select(ws, target_id, all_targets):
        files = _required_build(ws, target.id)
        cached = provision.ensure(ws, [target], log=_warn)[0]
        release, headers = provision.newest_headers(ws, target, log=_warn)
        kernel = kernel_from_path(headers, cache_dir=_symcache(ws))
        kernel.label = f"{target.id} newest ({release})"
        if release == cached.release:
            kernel.notes.append(f"the cached kernel {release} is the newest: no ABI change")
        else:
            kernel.notes.append(f"built for {cached.release}; the archive now has {release}")
        reports.append(check_modules(read_all(files), kernel))
    return reports


def symcheck_files(
    ws: Workspace,
    files: list[str],
    kernel_path: str | None,
    target_id: str | None,
    all_targets: bool,
) -> list[Report]:
    """Any modules checked against a kernel path or the selected targets."""
    modules = read_all(files)
    if kernel_path:
        kernels = [kernel_from_path(Path(kernel_path), cache_dir=_symcache(ws))]
    else:
        kernels = [_target_kernel(ws, t) for t in select(ws, target_id, all_targets)]
    return [check_modules(modules, kernel) for kernel in kernels]


def emit_symcheck(
    ws: Workspace,
    reports: list[Report],
    *,
    as_json: bool = False,
    junit: str | None = None,
    kcidb_file: str | None = None,
) -> int:
    if junit:
        symcheck_report.write_junit(reports, Path(junit))
    if kcidb_file:
        symcheck_report.to_kcidb(reports, kcidb.Checkout.of(ws)).write(Path(kcidb_file))
    sys.stdout.write(
        symcheck_report.to_json(reports) if as_json else symcheck_report.human(reports)
    )
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED


def matrix_cells(ws: Workspace, intree: list[str] | None = None) -> tuple[list, list[str]]:
    """Modules built for each target checked against every target: the cells of the matrix.

    With `intree`, those in-tree modules of each target's own tree stand in for our build
    (to see what a cross-kernel load does to real modules before kmod/ builds).
    """
    targets = list(load_targets(ws.targets_file).targets)
    trees = dict(
        zip([t.id for t in targets], provision.ensure(ws, targets, log=_warn), strict=True)
    )
    kernels = {t.id: kernel_for_tree(trees[t.id]) for t in targets}
    cells = []
    for built in targets:
        paths: list[str] | list[Path]
        if intree:
            files = module_files(trees[built.id].modules_dir)
            missing = [name for name in intree if name not in files]
            if missing:
                raise UsageError(f"{built.id}: no in-tree module {', '.join(missing)}")
            paths = [files[name] for name in intree]
        else:
            paths = _built_modules(ws, built.id)
        modules = read_all(paths)
        for against in targets:
            report = check_modules(modules, kernels[against.id], closure=False) if modules else None
            cells.append(symcheck_report.matrix_cell(built.id, against.id, report))
    return cells, [t.id for t in targets]


def symcheck_matrix(
    ws: Workspace, intree: list[str] | None = None, *, as_json: bool = False
) -> int:
    """Print the matrix; exit 0 when every build loads on its own target."""
    cells, ids = matrix_cells(ws, intree)
    sys.stdout.write(
        symcheck_report.matrix_json(cells)
        if as_json
        else symcheck_report.matrix_table(cells, ids, ids)
    )
    own = [c for c in cells if c.built_for == c.checked_against and c.reason != "not built"]
    return EXIT_OK if own and all(c.loads for c in own) else EXIT_FAILED


def export_ci(ws: Workspace, system_name: str, out: str | None = None, force: bool = False) -> int:
    """Write the CI system's matrix workflow (a job per target) to out, by default where the
    system looks for it in this repository; out "-" prints it."""
    ci = cimatrix.system(system_name)
    text = cimatrix.workflow(load_targets(ws.targets_file), ci)
    if out == "-":
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(out) if out else ws.root / ci.conventional_path
    changed = cimatrix.write_workflow(text, path, force=force)
    _say(f"{'wrote' if changed else 'unchanged:'} {path}")
    return EXIT_OK


def export_lava(
    ws: Workspace,
    target_id: str | None,
    all_targets: bool,
    scenario_names: list[str],
    out: str,
    url_prefix: str,
) -> int:
    """Write a LAVA job per target and scenario group to out/<target>/, with the artifacts
    they deploy and the device YAML a local lava-run needs (lava.export_target)."""
    chosen = lava.scenarios(scenario_names)  # a wrong name fails before anything is built
    prefix = lava.check_url_prefix(url_prefix)
    targets = select(ws, target_id, all_targets)
    out_dir = Path(out)
    written = 0
    for result in build(ws, target_id, all_targets):
        if result.unavailable:
            continue  # build() has warned
        if not result.ok:
            raise FailedError(f"{result.target_id}: the modules do not build: {result.summary()}")
        target = next(t for t in targets if t.id == result.target_id)
        tree = provision.ensure(ws, [target])[0]
        export = lava.export_target(
            tree, result.modules, chosen, out_dir, prefix, ws.build_dir / "modindex"
        )
        for job in export.jobs:
            _say(f"wrote {job}")
        written += len(export.jobs)
    if not written:
        raise ArchiveUnavailable("no LAVA job written: no selected target is available today")
    return EXIT_OK
