"""pvfront symcheck: would these modules load into that kernel? Predicted from the files alone."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.errors import UsageError
from pvfront.workspace import Workspace


def _run(args: argparse.Namespace) -> int:
    ws = Workspace.discover()
    if args.matrix:
        if args.modules or args.kernel or args.target or args.all_targets:
            raise UsageError(
                "--matrix checks every target against every target: give no "
                "MODULE, --kernel, --target or --all with it"
            )
        intree = [n.replace("-", "_") for n in args.intree.split(",")] if args.intree else None
        return commands.symcheck_matrix(ws, intree, as_json=args.json)
    if args.intree:
        raise UsageError("--intree only goes with --matrix")
    if args.against_newest:
        if args.modules or args.kernel:
            raise UsageError(
                "--against-newest checks build/<target>/*.ko: give no MODULE or --kernel with it"
            )
        reports = commands.symcheck_against_newest(ws, args.target, args.all_targets)
    elif not args.modules:
        reports = commands.symcheck_own_builds(ws, args.target, args.all_targets)
    else:
        if args.kernel and (args.target or args.all_targets):
            raise UsageError("give either --kernel or --target/--all, not both")
        reports = commands.symcheck_files(
            ws, args.modules, args.kernel, args.target, args.all_targets
        )
    return commands.emit_symcheck(
        ws, reports, as_json=args.json, junit=args.junit, kcidb_file=args.kcidb
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "symcheck",
        help="predict whether modules would load into a kernel",
        description="Check modules against a kernel's exports in the order the kernel's loader "
        "does: ELF header, module_layout CRC, vermagic, every symbol (unknown, "
        "GPL-only, CRC, namespace), duplicate exports. Exit 0: everything would "
        "load; 1: something would not; 2: bad usage or unreadable input.",
    )
    parser.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help=".ko/.ko.xz/.ko.gz/.ko.zst files (default: build/<target>/*.ko "
        "against its own target)",
    )
    parser.add_argument("--target", "-t", metavar="ID", help="a provisioned target")
    parser.add_argument("--all", action="store_true", dest="all_targets", help="every target")
    parser.add_argument(
        "--kernel",
        "-k",
        metavar="PATH",
        help="a headers tree, a [/usr]/lib/modules/<release> tree (headers or "
        "not), a kernel image (vmlinuz), Module.symvers[.gz] or System.map",
    )
    parser.add_argument(
        "--against-newest",
        action="store_true",
        help="build/<target>/*.ko (made for the cached ABI) against the newest "
        "kernel of the target's flavour in the archive: rebuild needed?",
    )
    parser.add_argument(
        "--matrix", action="store_true", help="our build for every target against every target"
    )
    parser.add_argument(
        "--intree",
        metavar="NAMES",
        help="with --matrix: use these in-tree modules (comma-separated) of "
        "each target instead of build/<id>/*.ko",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--junit", metavar="FILE", help="also write a JUnit XML report")
    parser.add_argument("--kcidb", metavar="FILE", help="also write a KCIDB v4 report")
    parser.set_defaults(handler=_run)
