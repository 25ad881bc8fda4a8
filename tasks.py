"""invoke tasks: thin shells over pvfront.commands (the same operations as the pvfront CLI)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from invoke import Exit, task

sys.path.insert(0, str(Path(__file__).parent / "tooling"))

from pvfront import bench as benchmark
from pvfront import commands
from pvfront.bench.plan import PARTS
from pvfront.errors import UsageError, run_command
from pvfront.package import Signing
from pvfront.workspace import Workspace


def _shell(function):
    """Run a task body as the pvfront CLI runs a command (errors.run_command: a pvfront error
    or an OSError on a path is one line, Ctrl-C is 130); a non-zero code ends invoke with it."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        code = run_command(lambda: function(*args, **kwargs))
        if code:
            raise Exit(code=code)

    return wrapper


@task(help={"check": "only check, never install"})
@_shell
def setup(c, check=False):
    """Check the host tools (qemu, busybox, pahole, kmod, gcc, make, cpio, sparse).

    Installs the missing ones with apt when run as root.
    """
    return commands.setup(install=not check)


@task(help={"target": "target id", "all": "every target", "list": "show targets instead"})
@_shell
def targets(c, target=None, all=False, list=False):
    """Fetch kernel targets into the cache (or list them with --list)."""
    ws = Workspace.discover()
    if list:
        return commands.targets_list(ws)
    return commands.targets_fetch(ws, target, all)


@task(
    help={
        "target": "target id",
        "all": "every target",
        "no_sparse": "skip sparse (C=1)",
        "test_hooks": "with the QEMU tests' fault-injection parameters, into build/test-hooks/",
    }
)
@_shell
def build(c, target=None, all=False, no_sparse=False, test_hooks=False):
    """Build kmod/ against each target's headers into build/<target>/."""
    results = commands.build(
        Workspace.discover(), target, all, sparse=not no_sparse, test_hooks=test_hooks
    )
    return commands.build_exit_code(results)


@task(
    help={
        "target": "target id",
        "modules": "load the built modules at boot",
        "blk": "number of virtio disks to attach",
        "net": "attach a virtio NIC",
        "image": "boot the target's Debian image through its boot loader",
    }
)
@_shell
def boot(c, target=None, modules=False, blk=0, net=False, image=False):
    """An interactive shell in a guest of the target, with the built modules copied in."""
    return commands.boot(
        Workspace.discover(), target, load=modules, disks=int(blk), net=net, use_image=image
    )


@task(help={"target": "target id", "all": "every target"})
@_shell
def image(c, target=None, all=False):
    """Make the Debian guest image of a target (mmdebstrap, GRUB; cached by content)."""
    return commands.images(Workspace.discover(), target, all)


@task(
    help={
        "target": "target id",
        "all": "every target",
        "matrix": "every build x every target",
        "against_newest": "our build against the newest ABI in the archive",
        "json": "machine-readable output",
        "junit": "also write JUnit XML here",
        "kcidb": "also write a KCIDB v4 report here",
    }
)
@_shell
def symcheck(
    c,
    target=None,
    all=False,
    matrix=False,
    against_newest=False,
    json=False,
    junit=None,
    kcidb=None,
):
    """Predict whether our build loads on its target (or the whole matrix), from the files."""
    ws = Workspace.discover()
    if matrix:
        return commands.symcheck_matrix(ws, as_json=json)
    if against_newest:
        reports = commands.symcheck_against_newest(ws, target, all)
    else:
        reports = commands.symcheck_own_builds(ws, target, all)
    return commands.emit_symcheck(ws, reports, as_json=json, junit=junit, kcidb_file=kcidb)


@task(
    help={
        "target": "target id",
        "all": "every target",
        "sign_key": "PEM private key",
        "sign_cert": "PEM certificate",
        "exclusive": "keep in-tree virtio_pci off devices",
        "repo_key": "sign the apt repository with this GnuPG key",
    }
)
@_shell
def package(
    c, target=None, all=False, sign_key=None, sign_cert=None, exclusive=False, repo_key=None
):
    """Gate on the symbol checks, then a .deb per target, the source package (pvfront-dkms)
    and an apt repository."""
    return commands.package(
        Workspace.discover(),
        target,
        all,
        signing=Signing.from_options(sign_key, sign_cert),
        exclusive=exclusive,
        repo_key=repo_key,
    )


@task(
    help={
        "target": "target id for the QEMU suites (default: the default target)",
        "all": "run the QEMU suites on every target",
        "k": "only tests matching this pytest -k expression",
        "n": "pytest-xdist workers (default 2)",
        "fast": "only the tests that need neither QEMU nor a provisioned kernel",
        "junit": "write JUnit XML here",
        "kcidb": "write the target tests' results here as a KCIDB v4 report",
        "real_guests": "run the real-guest suite on every chosen target, not only the default",
        "shard": "I/N: only the I-th of N shards (a target's tests stay together)",
    }
)
@_shell
def test(
    c,
    target=None,
    all=False,
    k=None,
    n=2,
    fast=False,
    junit=None,
    kcidb=None,
    real_guests=False,
    shard=None,
):
    """Run pytest over tests/ and qemu-tests/, building what the QEMU suites boot first."""
    ws = Workspace.discover()
    if not fast:
        commands.setup()
        if commands.build_exit_code(commands.build(ws, target, all)):
            return 1
    argv = []
    if all:
        argv.append("--all-targets")
    elif target:
        argv += ["--target", target]
    if real_guests:
        argv.append("--real-guests")
    if k:
        argv += ["-k", k]
    if shard:
        argv += ["--shard", shard]
    workers = ["-n", str(n)] if int(n) > 1 else []
    if fast:
        fast_only = ["-m", "not qemu and not kernel"]
        return commands.pytest(ws, [*workers, *fast_only, *argv, *_reports(junit, kcidb, "")])
    # The real-guest suite runs after the rest, its guests next only to each other: a systemd
    # guest starves a busybox one of the time its waits allow, but two real guests, each
    # mostly one busy shell, share the two cores well (732 s and 623 s side by side here,
    # 703 s and 547 s alone).
    return commands.pytest_in_turns(
        ws,
        [
            [*workers, "-m", "not real_guest", *argv, *_reports(junit, kcidb, "")],
            [*workers, "-m", "real_guest", *argv, *_reports(junit, kcidb, "-real-guests")],
        ],
    )


def _reports(junit, kcidb, suffix):
    """pytest's options for the report files of one turn: the turn's suffix before the
    extension, so that the real-guest turn does not overwrite the first turn's."""
    options = []
    for option, path in (("--junitxml", junit), ("--kcidb", kcidb)):
        if not path:
            continue
        target = Path(path)
        if not target.name or target.is_dir():
            raise UsageError(f"{path}: a directory; {option} takes the name of a file to write")
        options.append(f"{option}={target.with_name(target.stem + suffix + target.suffix)}")
    return options


@task(
    help={
        "quick": "one boot per setup, shorter runs, no IDE",
        "only": "measure only these parts, comma-separated: toolchain, blk, net",
    }
)
@_shell
def bench(c, quick=False, only=""):
    """Measure pvfront against the in-tree and emulated devices; JSON and chart in build/bench/."""
    parts = [p.strip() for p in only.split(",") if p.strip()] if only else PARTS
    return benchmark.bench_command(Workspace.discover(), quick, parts=parts)


@task(
    help={
        "github": "a GitHub Actions workflow",
        "gitlab": "a GitLab CI pipeline",
        "out": "where to write it (default: where the CI system looks for it; - prints it)",
        "force": "replace a different existing file",
    }
)
@_shell
def export_ci(c, github=False, gitlab=False, out=None, force=False):
    """Write a CI matrix workflow: one job per target of targets.toml."""
    if github == gitlab:
        raise UsageError("give one of --github or --gitlab")
    return commands.export_ci(Workspace.discover(), "github" if github else "gitlab", out, force)


@task(
    help={
        "target": "this target (default: targets.toml's default)",
        "all": "every target",
        "scenario": "a scenario group (repeatable; default: all)",
        "out": "where to write the jobs",
        "url_prefix": "where a LAVA server fetches them from, or file:// for a local lava-run",
    },
    iterable=["scenario"],
)
@_shell
def export_lava(c, out, url_prefix, target=None, all=False, scenario=None):
    """Write LAVA jobs (one per target and scenario group) with their artifacts."""
    return commands.export_lava(
        Workspace.discover(), target, all, list(scenario or []), out, url_prefix
    )
