"""pvfront export: write what other engines consume (a CI system's matrix workflow)."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.workspace import Workspace


def _run_ci(args: argparse.Namespace) -> int:
    return commands.export_ci(Workspace.discover(), args.system, args.out, args.force)


def _run_lava(args: argparse.Namespace) -> int:
    return commands.export_lava(
        Workspace.discover(),
        args.target,
        args.all_targets,
        args.scenario,
        args.out,
        args.url_prefix,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write jobs for other engines to run")
    engines = parser.add_subparsers(dest="engine", required=True, metavar="ENGINE")
    ci = engines.add_parser(
        "ci",
        help="a CI matrix workflow: one job per target of targets.toml",
        description="Write a matrix workflow that runs `invoke setup build` and `invoke test` "
        "for each target in its own job, caching $PVFRONT_CACHE per target.",
    )
    which = ci.add_mutually_exclusive_group(required=True)
    which.add_argument("--github", dest="system", action="store_const", const="github")
    which.add_argument("--gitlab", dest="system", action="store_const", const="gitlab")
    ci.add_argument(
        "--out",
        metavar="FILE",
        help="where to write it (default: .github/workflows/pvfront.yml or .gitlab-ci.yml in "
        "the repository; - prints it)",
    )
    ci.add_argument("--force", action="store_true", help="replace a different existing file")
    ci.set_defaults(handler=_run_ci)
    lava = engines.add_parser(
        "lava",
        help="LAVA job definitions: one per target and scenario group, with their artifacts",
        description="Write OUT/<target>/<scenario>.yaml (device_type qemu, lava-dispatcher's "
        "schema) with the kernel, initramfs and disk images each job deploys beside it, the "
        "device YAML a local `lava-run` needs (OUT/<target>/device.yaml) and a server's "
        "device dictionary (OUT/qemu-pvfront.jinja2).",
    )
    which = lava.add_mutually_exclusive_group()
    which.add_argument("--target", metavar="ID", help="this target (default: targets.toml's)")
    which.add_argument("--all", dest="all_targets", action="store_true", help="every target")
    lava.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="a scenario group (repeatable; default: all of them: blk, net)",
    )
    lava.add_argument("--out", required=True, metavar="DIR", help="where to write the jobs")
    lava.add_argument(
        "--url-prefix",
        required=True,
        metavar="URL",
        help="where a LAVA server fetches OUT from (URL/<target>/<file>), or file:// for "
        "this machine's paths (a local lava-run)",
    )
    lava.set_defaults(handler=_run_lava)
