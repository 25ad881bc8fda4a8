"""pvfront export: write what other engines consume (a CI system's matrix workflow)."""

from __future__ import annotations

import argparse

from pvfront import commands
from pvfront.workspace import Workspace


def _run_ci(args: argparse.Namespace) -> int:
    return commands.export_ci(Workspace.discover(), args.system, args.out, args.force)


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
